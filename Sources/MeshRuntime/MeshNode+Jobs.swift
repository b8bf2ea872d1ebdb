import Foundation
import Logging
import MeshCore
import MeshCrypto
import MeshGossip
import MeshJobs
import MeshLedger
import MeshMarket

/// The shell around the negotiation sessions (loop-confined): serves `gpumesh/jobs/1` as a
/// provider, runs jobs as a renter, carries out the sessions' directives (files, executors,
/// timers), keeps job records and the receipt store. Loop-confined: the `@unchecked Sendable`
/// only lets closures that hop back to the loop carry it.
final class JobsService: @unchecked Sendable {
    unowned let node: MeshNode
    /// `<data>/jobs`: job logs (finished jobs' records live in the ledger).
    let directory: String
    /// Provider work directories: `<data>/work`, or under the temp directory when running as root.
    let workRoot: String
    private(set) var infos: [String: JobInfo] = [:]
    private var order: [String] = []
    private var providing: [ObjectIdentifier: ProviderJob] = [:]
    private var renting: [String: RenterJob] = [:]
    private var stopped = false
    /// Where received chunks are checked and written, and job files removed: off the loop, in order.
    let io = DispatchQueue(label: "gpumesh.jobs.io")

    init(node: MeshNode) throws {
        self.node = node
        directory = node.dataDirectory + "/jobs"
        let fm = FileManager.default
        if getuid() == 0 {
            // Jobs of a root provider run as nobody, who cannot enter the private data directory:
            // their work directories live in a root-owned directory anyone may traverse but not
            // list, each one owned by nobody with mode 0700.
            workRoot = NSTemporaryDirectory() + "gpumesh-work-" + node.peerID.hex.prefix(16)
            try fm.createDirectory(atPath: workRoot, withIntermediateDirectories: true)
            _ = chmod(workRoot, 0o711)  // also when it was left by an earlier run
        } else {
            workRoot = node.dataDirectory + "/work"
            try fm.createDirectory(atPath: workRoot, withIntermediateDirectories: true)
        }
        try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // Work directories left by a killed node hold nothing anyone will collect.
        for stale in (try? fm.contentsOfDirectory(atPath: workRoot)) ?? [] { try? fm.removeItem(atPath: workRoot + "/" + stale) }
        // Finished jobs from the ledger; a history.jsonl kept by an older node moves in once.
        let history = directory + "/history.jsonl"
        if let text = try? String(contentsOfFile: history, encoding: .utf8) {
            let old = text.split(separator: "\n").compactMap { try? JSONDecoder().decode(JobInfo.self, from: Data($0.utf8)) }
            for info in old { node.ledger.save(info) }
            node.ledger.waitForWrites()
            try? fm.moveItem(atPath: history, toPath: history + ".imported")
        }
        for row in (try? node.ledger.ledger.jobs()) ?? [] {
            guard let info = try? JSONDecoder().decode(JobInfo.self, from: Data(row.record.utf8)) else { continue }
            if infos[info.id] == nil { order.append(info.id) }
            infos[info.id] = info
        }
    }

    var now: UInt64 { MeshNode.wallClockMilliseconds() }

    func stop() {
        stopped = true
        for job in Array(renting.values) { if job.session != nil { driveRenter(job, job.session!.cancel("the renter's node stopped")) } }
        // A running job's session asks for the kill itself.
        for job in Array(providing.values) { driveProvider(job, job.session.cancel("the provider's node stopped")) }
        if getuid() == 0 { try? FileManager.default.removeItem(atPath: workRoot) }
    }

    // MARK: Records

    private func record(_ info: JobInfo) {
        if infos[info.id] == nil { order.append(info.id) }
        infos[info.id] = info
    }

    private func update(_ id: String, _ body: (inout JobInfo) -> Void) {
        guard var info = infos[id] else { return }
        body(&info)
        info.updatedAt = Date().timeIntervalSince1970
        infos[id] = info
        if info.isFinished { node.ledger.save(info) }
    }

    /// Jobs, newest first.
    func list() -> [JobInfo] { order.reversed().compactMap { infos[$0] } }

    /// The job whose ID starts with `prefix` (at least 4 hex digits, unambiguous).
    func find(_ prefix: String) throws(JobError) -> JobInfo {
        let p = prefix.lowercased()
        guard p.count >= 4 else { throw .badRequest("a job ID needs at least 4 hex digits") }
        let matches = order.filter { $0.hasPrefix(p) }
        guard matches.count == 1, let info = infos[matches[0]] else {
            throw matches.isEmpty ? .unknown(prefix) : .badRequest("\(prefix) matches \(matches.count) jobs; give more digits")
        }
        return info
    }

    func logPath(_ id: String) -> String { directory + "/\(id).log" }

    // MARK: Provider side

    final class ProviderJob: @unchecked Sendable {
        var session: Negotiation.ProviderSession
        let channel: SecureChannel
        var id: String?
        var workDir: String?
        var store: ChunkStore?
        var process: JobProcess?
        var cleanup: [String]?
        var timer: LoopTimer?
        var sender: ChunkSender?
        var log: JobLog?
        var closed = false
        /// Each output's chunk hashes, from collecting it.
        var outputChunks: [String: [[UInt8]]] = [:]

        init(session: Negotiation.ProviderSession, channel: SecureChannel) {
            self.session = session
            self.channel = channel
        }
    }

    /// The policy requests are checked against now (nothing is offered while not providing).
    func policy(renter: PublicKey) -> ProviderPolicy {
        let c = node.providerConfig
        guard let capability = node.provider?.capability else {
            return ProviderPolicy(price: c.price, executors: [], maxMemoryMiB: 0, gpus: [], cpuCores: 0, diskFreeMiB: 0)
        }
        let allowed = Set(c.allowRenters.compactMap { PeerID(hex: $0) })
        var policy = ProviderPolicy(price: capability.price, executors: capability.executors, images: c.images, maxDurationSeconds: c.maxDurationSeconds,
                              maxInputBytes: UInt64(c.maxInputMiB) << 20, maxOutputBytes: UInt64(c.maxOutputMiB) << 20,
                              maxMemoryMiB: c.maxMemoryMiB > 0 ? c.maxMemoryMiB : capability.ramMiB, allowRenters: allowed,
                              gpus: capability.gpus, cpuCores: capability.cpuCores, diskFreeMiB: capability.diskFreeMiB)
        policy.minRenterReputation = c.minRenterReputation
        policy.renterReputation = node.ledger.reputation(renter)
        return policy
    }

    private var slotsInUse: Int { providing.values.reduce(0) { $0 + ($1.session.holdsSlot || $1.process != nil ? 1 : 0) } }

    private var totalSlots: Int { node.provider?.capability.totalSlots ?? 0 }

    /// A channel opened for `gpumesh/jobs/1`: this node acts as provider.
    func accept(_ channel: SecureChannel) {
        guard !stopped, let renter = channel.remoteIdentity else { channel.close(); return }
        let policy = policy(renter: renter)
        let gpuModel = node.provider?.capability.gpus.first?.slug ?? ""
        let job = ProviderJob(session: Negotiation.ProviderSession(identity: node.identity, renter: renter, policy: policy, gpuModel: gpuModel),
                              channel: channel)
        providing[ObjectIdentifier(job)] = job
        channel.setMessageHandler { [unowned self, unowned job] bytes in
            job.session.freeSlots = totalSlots - slotsInUse
            let before = job.session.state
            let ds = job.session.onMessage(bytes, now: now)
            if before == .awaitingRequest { providerRequested(job) }
            driveProvider(job, ds)
        }
        channel.onClose { [unowned self, unowned job] _ in driveProvider(job, job.session.onClosed()) }
        driveProvider(job, job.session.start(now: now))
    }

    private func providerRequested(_ job: ProviderJob) {
        guard job.id == nil, let spec = job.session.spec else { return }
        node.bump(.jobsRequested)
        let id = Hex.encode(job.session.jobID)
        // A job ID seen before (a renter reusing one) gets its own record under a suffixed key.
        let key = infos[id] == nil ? id : id + "-" + Hex.encode(SecureRandom.bytes(2))
        job.id = key
        let t = Date().timeIntervalSince1970
        record(JobInfo(id: key, role: "provider", name: spec.name, peer: PeerID(publicKey: job.session.renter).hex, state: "negotiating",
                       createdAt: t, updatedAt: t, inputBytes: job.session.inputs.reduce(0) { $0 + $1.size }))
        job.log = JobLog(path: logPath(key))
    }

    func driveProvider(_ job: ProviderJob, _ directives: [Negotiation.Directive]) {
        for d in directives {
            switch d {
            case .send(let m):
                job.channel.send(m.encoded)
            case .timer(let ms, let token):
                job.timer?.cancel()
                job.timer = try? node.loop.schedule(after: .milliseconds(Int64(ms))) { [unowned self, weak job] in
                    guard let job else { return }
                    driveProvider(job, job.session.onTimeout(token: token, now: now))
                }
            case .writeInput(let file, let offset, let data, let hash):
                let store: ChunkStore
                do throws(JobFiles.Failure) { store = try prepareWork(job) } catch {
                    driveProvider(job, job.session.fail("cannot store input: \(error)"))
                    return
                }
                let count = UInt64(data.count)
                store.submit(file: file, offset: offset, data: data, hash: hash) { [unowned self, weak job] result in
                    guard let job else { return }
                    switch result {
                    case .success(let matches):
                        // Recorded before the session may start the job (and the record says "running").
                        if let id = job.id, matches { update(id) { $0.state = "receiving-inputs"; $0.inputBytesDone += count } }
                        driveProvider(job, job.session.onChunkStored(matches: matches, now: now))
                    case .failure(let e):
                        driveProvider(job, job.session.fail("cannot store input: \(e)"))
                    }
                }
            case .run:
                run(job)
            case .kill:
                job.process?.cancel()  // a container is removed once the client has exited (processExited)
            case .sendOutputs(let files):
                guard let dir = job.workDir else { continue }
                if let id = job.id { update(id) { $0.outputBytes = files.reduce(0) { $0 + $1.size } } }
                let sender = ChunkSender(channel: job.channel, files: files.map { (dir + "/" + $0.name, $0.size, job.outputChunks[$0.name]) },
                                         progress: { [unowned self, unowned job] n in
                                             job.session.onProgress(now: now)
                                             if let id = job.id { update(id) { $0.outputBytesDone += UInt64(n) } }
                                         },
                                         done: { [unowned self, unowned job] result in
                                             switch result {
                                             case .success: driveProvider(job, job.session.onOutputsSent(now: now))
                                             case .failure(let e): driveProvider(job, job.session.fail("cannot send outputs: \(e)"))
                                             }
                                         })
                job.sender = sender
                sender.start()
            case .store(let receipt):
                store(receipt, publish: true)
            case .close(let outcome):
                closeProvider(job, outcome)
            case .sendInputs, .started, .log, .finished, .writeOutput, .outputsVerified:
                continue  // renter directives
            }
        }
    }

    private func prepareWork(_ job: ProviderJob) throws(JobFiles.Failure) -> ChunkStore {
        if let w = job.store { return w }
        let dir = workRoot + "/" + (job.id ?? "job") + "-" + Hex.encode(SecureRandom.bytes(4))
        do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700]) }
        catch { throw JobFiles.Failure("cannot create \(dir): \(error.localizedDescription)") }
        job.workDir = dir
        let w = ChunkStore(loop: node.loop, queue: io, channel: job.channel, directory: dir, names: job.session.inputs.map(\.name))
        job.store = w
        return w
    }

    private func run(_ job: ProviderJob) {
        guard let spec = job.session.spec else { return }
        let argv: [String]
        do {
            let store = try prepareWork(job)
            try store.finish(creating: job.session.inputs.indices.filter { job.session.inputs[$0].size == 0 }, sync: false)
            argv = try executorArguments(job, spec, workDir: job.workDir!)
        } catch {
            driveProvider(job, job.session.onStartFailed("\(error)"))
            return
        }
        let loop = node.loop
        do {
            job.process = try JobProcess.start(argv, timeLimitSeconds: spec.resources.timeLimitSeconds, onOutput: { [self, job] stream, bytes in
                loop.execute {
                    job.log?.append(bytes)
                    if let id = job.id { self.update(id) { $0.logBytes = job.log?.bytes ?? 0 } }
                    self.driveProvider(job, job.session.onLog(stream: stream.rawValue, data: bytes))
                }
            }, onExit: { [self, job] exit in
                loop.execute {
                    self.processExited(job, exit)
                }
            })
        } catch {
            driveProvider(job, job.session.onStartFailed("cannot start the executor: \(error)"))
            return
        }
        if let id = job.id { update(id) { $0.state = "running" } }
        driveProvider(job, job.session.onStarted(now: now))
    }

    private func executorArguments(_ job: ProviderJob, _ spec: JobSpec, workDir: String) throws -> [String] {
        let r = spec.resources
        switch spec.executor {
        case .sandbox:
            let tools = try Sandbox.Tools.find().get()
            let policy = SandboxPolicy(workDirectory: workDir, timeLimitSeconds: r.timeLimitSeconds, memoryBytes: UInt64(r.memoryMiB) << 20,
                                       fileSizeBytes: UInt64(r.diskMiB) << 20, environment: spec.environment,
                                       devices: r.gpus > 0 ? Sandbox.gpuDevices() : [], hiddenPaths: [node.dataDirectory])
            return try Sandbox.commandLine(spec.command, policy: policy, tools: tools)
        case .docker, .podman:
            let runtime = spec.executor.rawValue
            guard let program = GPUDetector.find(runtime) else { throw JobFiles.Failure("\(runtime) is not installed") }
            let plan = ContainerExecutor.plan(runtime: runtime, program: program, name: "gpumesh-" + (job.id ?? "job").prefix(24), image: spec.image ?? "",
                                              command: spec.command, environment: spec.environment, workDirectory: workDir,
                                              memoryMiB: r.memoryMiB, cpuCores: r.cpuCores, gpus: r.gpus, fileSizeBytes: UInt64(r.diskMiB) << 20)
            job.cleanup = plan.cleanup
            return plan.argv
        }
    }

    private func processExited(_ job: ProviderJob, _ exit: JobExit) {
        job.process = nil
        if exit.timedOut || exit.cancelled, let c = job.cleanup { Self.runDetached(c) }
        if let id = job.id {
            update(id) { $0.exitStatus = exit.status; $0.timedOut = exit.timedOut; $0.wallSeconds = exit.wallSeconds }
        }
        guard job.session.state == .running, let spec = job.session.spec, let dir = job.workDir else {
            if job.closed { removeWork(job) }
            return
        }
        let loop = node.loop
        let globs = spec.outputs
        DispatchQueue.global().async { [self, job] in
            let found = Result { () throws(JobFiles.Failure) in try JobFiles.collect(in: dir, globs: globs, maxFiles: Negotiation.maxManifestFiles) }
            loop.execute {
                let now = self.now
                var outputs: [Negotiation.FileEntry] = []
                var note = ""
                switch found {
                case .success(let files):
                    outputs = files.map { Negotiation.FileEntry(name: $0.path, size: $0.size, hash: $0.hash) }
                    job.outputChunks = Dictionary(files.map { ($0.path, $0.chunks) }, uniquingKeysWith: { a, _ in a })
                case .failure(let e): note = "outputs not collected: \(e)"
                }
                self.driveProvider(job, job.session.onExited(status: exit.status, signaled: exit.signaled, timedOut: exit.timedOut,
                                                        wallMilliseconds: UInt64(exit.wallSeconds * 1000), outputs: outputs, note: note, now: now))
            }
        }
    }

    /// What a failed job says of the other peer, if anything: declines and failures before an
    /// agreement say nothing; neither does a failure this side caused or the peer reported.
    static func experience(of f: Negotiation.Failure, agreed: Bool, finished: Bool, asProvider: Bool) -> Reputation.Outcome? {
        guard agreed else { return nil }
        switch f.reason {
        case .protocolError: return f.byPeer ? nil : .failedVerification
        case .timeout, .disconnected: return asProvider && finished ? .unsigned : .noShow
        case .cancelled, .failed: return f.byPeer ? .failure : nil
        default: return nil
        }
    }

    private func closeProvider(_ job: ProviderJob, _ outcome: Negotiation.Outcome) {
        if case .failed(let f) = outcome,
           let e = Self.experience(of: f, agreed: job.session.accepted, finished: job.session.finish != nil, asProvider: true) {
            node.ledger.experienced(e, peer: job.session.renter, role: "renter", jobID: job.session.jobID, note: f.note)
        }
        job.closed = true
        job.timer?.cancel()
        job.sender?.stop()
        job.store?.discard()
        job.store = nil
        job.channel.close()
        if let id = job.id {
            update(id) { info in
                switch outcome {
                case .completed(let r):
                    info.state = "completed"
                    info.receipt = Hex.encode(r.id)
                    info.charge = Self.points(r.charge)
                case .failed(let f):
                    info.state = f.reason == .cancelled ? "cancelled" : "failed"
                    info.failure = "\(f.reason): \(f.note)"
                }
            }
        }
        switch outcome {
        case .completed: node.bump(.jobsCompleted)
        case .failed(let f):
            if job.session.quote == nil { node.bump(.jobsDeclined) } else { node.bump(.jobsFailed) }
            node.logger.debug("job ended", metadata: ["job": "\(job.id ?? "-")", "reason": "\(f)"])
        }
        if job.process == nil { removeWork(job) }
    }

    private func removeWork(_ job: ProviderJob) {
        // On the I/O queue: after any chunk still being written there, and off the loop.
        if let dir = job.workDir { io.async { try? FileManager.default.removeItem(atPath: dir) } }
        job.workDir = nil
        providing[ObjectIdentifier(job)] = nil
    }

    static func runDetached(_ argv: [String]) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: argv[0])
        p.arguments = Array(argv.dropFirst())
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try? p.run()
    }

    static func points(_ millipoints: UInt64) -> String {
        String(format: "%.3f", Double(millipoints) / 1000)
    }

    // MARK: Receipts

    func store(_ receipt: Negotiation.Receipt, publish: Bool) {
        do {
            try node.ledger.storeOwn(receipt)
        } catch {
            node.logger.error("receipt not stored: \(error)")
            return
        }
        guard publish, !stopped else { return }
        do { _ = try node.gossip.publish(.receipt, payload: receipt.encoded) } catch { node.logger.debug("receipt not published: \(error)") }
    }

    /// A receipt heard on gossip: counted when it verifies and comes from one of its parties.
    func heard(_ message: Gossip.Message) {
        guard let r = Negotiation.Receipt(decoding: message.payload), r.isValid, message.origin == r.provider || message.origin == r.renter else {
            node.bump(.receiptsRefused)
            return
        }
        node.bump(.receiptsHeard)
        node.ledger.heard(r, from: message.origin)
    }

    // MARK: Renter side

    final class RenterJob: @unchecked Sendable {
        let id: [UInt8]
        let hex: String
        let request: JobRequest
        var entries: [Negotiation.FileEntry] = []
        /// Each input's chunk hashes, from hashing it before the request.
        var chunks: [[[UInt8]]] = []
        var candidates: [Contact] = []
        var next = 0
        var session: Negotiation.RenterSession?
        var channel: SecureChannel?
        var store: ChunkStore?
        var sender: ChunkSender?
        var timer: LoopTimer?
        let log: JobLog
        var cancelled = false
        var inputsStarted: UInt64 = 0
        var lastFailure: String?
        var waiters: [(JobInfo) -> Void] = []
        let outputDirectory: String
        let partialDirectory: String

        init(id: [UInt8], request: JobRequest, log: JobLog) {
            self.id = id
            self.hex = Hex.encode(id)
            self.request = request
            self.log = log
            outputDirectory = request.outputRoot + "/" + hex
            partialDirectory = request.outputRoot + "/." + hex + ".partial"
        }
    }

    /// Starts a job as renter; `done` runs (on the loop) when it is over.
    func startRenter(_ request: JobRequest, done: ((JobInfo) -> Void)? = nil) throws(JobError) -> String {
        guard !stopped else { throw .badRequest("the node is stopping") }
        guard request.inputPaths.count == request.spec.inputs.count else {
            throw .badRequest("\(request.spec.inputs.count) inputs in the spec but \(request.inputPaths.count) paths given")
        }
        guard (0...16).contains(request.retries) else { throw .badRequest("retries must be 0 to 16") }
        let id = SecureRandom.bytes(Negotiation.jobIDBytes)
        let hex = Hex.encode(id)
        let job = RenterJob(id: id, request: request, log: JobLog(path: logPath(hex)))
        if let done { job.waiters.append(done) }
        renting[hex] = job
        let t = Date().timeIntervalSince1970
        record(JobInfo(id: hex, role: "renter", name: request.spec.name, peer: nil, state: "preparing", createdAt: t, updatedAt: t,
                       outputDirectory: job.outputDirectory))
        let loop = node.loop
        let paths = request.inputPaths
        let names = request.spec.inputs.map(JobSpec.baseName)
        DispatchQueue.global().async { [self] in
            let (entries, chunks, problem) = Self.hashInputs(paths, names)
            loop.execute {
                guard let job = self.renting[hex] else { return }
                if let problem { self.finishRenter(job, state: "failed", failure: "bad-request: \(problem)"); return }
                job.entries = entries
                job.chunks = chunks
                self.update(hex) { $0.inputBytes = entries.reduce(0) { $0 + $1.size } }
                self.findProviders(job)
            }
        }
        return hex
    }

    private static func hashInputs(_ paths: [String], _ names: [String]) -> ([Negotiation.FileEntry], [[[UInt8]]], String?) {
        var entries: [Negotiation.FileEntry] = []
        var chunks: [[[UInt8]]] = []
        for (path, name) in zip(paths, names) {
            do throws(JobFiles.Failure) {
                let h = try JobFiles.hashChunks(path: path, followLinks: true)
                entries.append(Negotiation.FileEntry(name: name, size: h.size, hash: h.hash))
                chunks.append(h.chunks)
            } catch {
                return (entries, chunks, "input \(path): \(error)")
            }
        }
        return (entries, chunks, nil)
    }

    private func findProviders(_ job: RenterJob) {
        if job.cancelled { finishRenter(job, state: "cancelled", failure: "cancelled: before a provider was found"); return }
        if let contact = job.request.provider {
            job.candidates = [contact]
            attemptNext(job)
            return
        }
        let spec = job.request.spec
        let r = spec.resources
        let query = CapabilityQuery(model: r.gpuModel, minVRAMMiB: r.minVRAMMiB > 0 ? r.minVRAMMiB : nil, gpus: max(1, r.gpus),
                                    executor: spec.executor, maxPrice: spec.maxPrice, limit: job.request.retries + 4)
        update(job.hex) { $0.state = "finding" }
        node.startFind(query, measureRTT: false, seed: SecureRandom.uint64()) { [weak self, weak job] result in
            guard let self, let job else { return }
            switch result {
            case .success(let found):
                job.candidates = found.offers.map(\.record.capability.contact).filter { $0.peerID != self.node.peerID }
                if job.candidates.isEmpty {
                    finishRenter(job, state: "failed", failure: "resources: no provider matches (\(found.matched) matched, \(found.shardsRead) shards read)")
                    return
                }
                attemptNext(job)
            case .failure(let e):
                finishRenter(job, state: "failed", failure: "failed: the search failed: \(e)")
            }
        }
    }

    private func attemptNext(_ job: RenterJob) {
        if job.cancelled { finishRenter(job, state: "cancelled", failure: job.lastFailure ?? "cancelled"); return }
        guard job.next < job.candidates.count, job.next <= job.request.retries else {
            let tried = job.next
            finishRenter(job, state: "failed", failure: (job.lastFailure ?? "no provider") + (tried > 1 ? " (after \(tried) providers)" : ""))
            return
        }
        let contact = job.candidates[job.next]
        job.next += 1
        update(job.hex) { $0.attempts = job.next; $0.peer = contact.peerID.hex; $0.state = "negotiating" }
        node.openChannel(to: contact, service: ChannelService.jobs) { [weak self, weak job] result in
            guard let self, let job else { if case .success(let c) = result { c.close() }; return }
            switch result {
            case .failure(let e):
                job.lastFailure = "disconnected: cannot reach \(contact.peerID.short): \(e)"
                attemptNext(job)
            case .success(let channel):
                guard !job.cancelled, !stopped else { channel.close(); attemptNext(job); return }
                let spec = job.request.spec
                job.channel = channel
                job.session = Negotiation.RenterSession(identity: node.identity, provider: channel.remoteIdentity!, jobID: job.id, spec: spec,
                                                        inputs: job.entries, maxOutputBytes: UInt64(spec.resources.diskMiB) << 20,
                                                        timeouts: job.request.timeouts)
                channel.setMessageHandler { [unowned self, unowned job] bytes in
                    guard job.channel === channel, job.session != nil else { return }
                    driveRenter(job, job.session!.onMessage(bytes, now: now))
                }
                channel.onClose { [unowned self, unowned job] _ in
                    guard job.channel === channel, job.session != nil else { return }
                    driveRenter(job, job.session!.onClosed())
                }
                driveRenter(job, job.session!.start(now: now))
            }
        }
    }

    func driveRenter(_ job: RenterJob, _ directives: [Negotiation.Directive]) {
        for d in directives {
            guard let channel = job.channel else { return }
            switch d {
            case .send(let m):
                channel.send(m.encoded)
            case .timer(let ms, let token):
                job.timer?.cancel()
                job.timer = try? node.loop.schedule(after: .milliseconds(Int64(ms))) { [unowned self, weak job] in
                    guard let job, job.session != nil else { return }
                    driveRenter(job, job.session!.onTimeout(token: token, now: now))
                }
            case .sendInputs:
                update(job.hex) { $0.state = "sending-inputs"; $0.inputBytesDone = 0 }
                job.inputsStarted = EventLoop.monotonicNanoseconds()
                let sender = ChunkSender(channel: channel, files: job.entries.indices.map { (job.request.inputPaths[$0], job.entries[$0].size, job.chunks[$0]) },
                                         progress: { [unowned self, unowned job] n in
                                             job.session?.onProgress(now: now)
                                             update(job.hex) { $0.inputBytesDone += UInt64(n) }
                                         },
                                         done: { [unowned self, unowned job] result in
                                             guard job.session != nil else { return }
                                             switch result {
                                             case .success: driveRenter(job, job.session!.onInputsSent(now: now))
                                             case .failure(let e): driveRenter(job, job.session!.fail("cannot read input: \(e)"))
                                             }
                                         },
                                         followLinks: true)
                job.sender = sender
                sender.start()
            case .started:
                let seconds = Double(EventLoop.monotonicNanoseconds() - job.inputsStarted) / 1e9
                update(job.hex) { $0.state = "running"; $0.inputSeconds = seconds }
            case .log(_, let data):
                job.log.append(data)
                update(job.hex) { $0.logBytes = job.log.bytes }
            case .finished(let f):
                job.store = ChunkStore(loop: node.loop, queue: io, channel: channel, directory: job.partialDirectory, names: f.outputs.map(\.name),
                                       fresh: true)
                update(job.hex) { info in
                    info.state = "receiving-outputs"
                    info.exitStatus = f.signaled ? -f.exitStatus : f.exitStatus
                    info.timedOut = f.timedOut
                    info.wallSeconds = Double(f.wallMilliseconds) / 1000
                    info.outputBytes = f.outputs.reduce(0) { $0 + $1.size }
                    info.outputBytesDone = 0
                    if !f.note.isEmpty { info.failure = f.note }
                }
            case .writeOutput(let file, let offset, let data, let hash):
                guard let store = job.store else { continue }
                let count = UInt64(data.count)
                store.submit(file: file, offset: offset, data: data, hash: hash) { [unowned self, weak job] result in
                    guard let job, job.session != nil else { return }
                    switch result {
                    case .success(let matches):
                        if matches { update(job.hex) { $0.outputBytesDone += count } }
                        driveRenter(job, job.session!.onChunkStored(matches: matches, now: now))
                    case .failure(let e):
                        driveRenter(job, job.session!.fail("cannot store output: \(e)"))
                    }
                }
            case .outputsVerified:
                do {
                    try placeOutputs(job)
                } catch {
                    driveRenter(job, job.session!.fail("cannot place outputs: \(error)"))
                    return
                }
            case .store(let receipt):
                store(receipt, publish: false)
            case .close(let outcome):
                job.timer?.cancel()
                job.sender?.stop()
                job.channel = nil
                channel.close()
                switch outcome {
                case .completed(let r):
                    update(job.hex) { $0.receipt = Hex.encode(r.id); $0.charge = Self.points(r.charge) }
                    finishRenter(job, state: "completed", failure: nil)
                case .failed(let f):
                    if let session = job.session,
                       let e = Self.experience(of: f, agreed: session.quote != nil, finished: session.finish != nil, asProvider: false) {
                        node.ledger.experienced(e, peer: session.provider, role: "provider", jobID: session.jobID, note: f.note)
                    }
                    // Removed before the failure is reported (after any write still queued): a
                    // failed attempt leaves no half-written output behind.
                    job.store?.discard()
                    job.store = nil
                    let partial = job.partialDirectory
                    io.sync { try? FileManager.default.removeItem(atPath: partial) }
                    job.lastFailure = "\(f.reason): \(f.note)"
                    job.session = nil
                    if f.reason == .cancelled && !f.byPeer { job.cancelled = true }
                    if job.cancelled || stopped {
                        finishRenter(job, state: "cancelled", failure: job.lastFailure)
                    } else {
                        node.logger.info("job attempt failed", metadata: ["job": "\(job.hex.prefix(12))", "reason": "\(f)"])
                        attemptNext(job)
                    }
                }
            case .writeInput, .run, .kill, .sendOutputs:
                continue  // provider directives
            }
        }
    }

    /// Moves verified outputs from the partial directory into the output directory.
    private func placeOutputs(_ job: RenterJob) throws {
        guard let finish = job.session?.finish else { return }
        try job.store?.finish(creating: [], sync: true)
        job.store = nil
        let fm = FileManager.default
        try fm.createDirectory(atPath: job.outputDirectory, withIntermediateDirectories: true)
        for f in finish.outputs {
            let from = job.partialDirectory + "/" + f.name
            let to = job.outputDirectory + "/" + f.name
            try fm.createDirectory(atPath: (to as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            if f.size == 0 { _ = fm.createFile(atPath: from, contents: nil) }
            if fm.fileExists(atPath: to) { try fm.removeItem(atPath: to) }
            try fm.moveItem(atPath: from, toPath: to)
        }
        try? fm.removeItem(atPath: job.partialDirectory)
        update(job.hex) { $0.outputs = finish.outputs.map(\.name) }
    }

    private func finishRenter(_ job: RenterJob, state: String, failure: String?) {
        renting[job.hex] = nil
        update(job.hex) { info in
            info.state = state
            if state != "completed" { info.failure = failure }
        }
        node.bump(state == "completed" ? .jobsCompleted : .jobsFailed)
        let info = infos[job.hex]!
        let waiters = job.waiters
        job.waiters = []
        for w in waiters { w(info) }
    }

    /// Cancels a job in either role.
    func cancel(_ prefix: String) throws(JobError) -> JobInfo {
        let info = try find(prefix)
        if let job = renting[info.id] {
            job.cancelled = true
            if job.session != nil { driveRenter(job, job.session!.cancel("cancelled by the renter")) }
        } else if let job = providing.values.first(where: { $0.id == info.id }) {
            driveProvider(job, job.session.cancel("cancelled by the provider"))
        } else if !info.isFinished {
            throw .badRequest("job \(info.id.prefix(12)) is not running here")
        }
        return infos[info.id] ?? info
    }
}

// MARK: - Public API and control methods

extension MeshNode {
    /// Runs a job as renter and waits for it to end (from any thread): the info of a completed
    /// job, or `JobError.failed` with the info of one that failed or was cancelled.
    public func runJob(_ request: JobRequest) async throws -> JobInfo {
        let info: JobInfo = try await withCheckedThrowingContinuation { continuation in
            let accepted = loop.execute { [self] in
                do throws(JobError) {
                    _ = try jobs.startRenter(request) { continuation.resume(returning: $0) }
                } catch {
                    continuation.resume(throwing: error)
                }
            }
            if !accepted { continuation.resume(throwing: NodeError.stopped) }
        }
        guard info.state == "completed" else { throw JobError.failed(info) }
        return info
    }

    /// Starts a job as renter and returns its ID at once (from any thread).
    public func startJob(_ request: JobRequest) async throws -> String {
        try await loop.submit { () throws -> String in try self.jobs.startRenter(request) }
    }

    /// This node's jobs in both roles, newest first (from any thread).
    public func jobList() async throws -> [JobInfo] {
        try await loop.submit { self.jobs.list() }
    }

    /// Up to `max` bytes of a job's log from `offset` (from any thread; empty past the end).
    /// The job is named by its full ID or an unambiguous prefix.
    public func jobLog(_ id: String, from offset: UInt64, max: Int = 256 << 10) async throws -> (job: JobInfo, bytes: [UInt8]) {
        try await loop.submit { () throws -> (job: JobInfo, bytes: [UInt8]) in
            let info = try self.jobs.find(id)
            return (info, JobLog.read(self.jobs.logPath(info.id), from: offset, max: max))
        }
    }

    /// Cancels a job by ID prefix (from any thread).
    public func cancelJob(_ id: String) async throws -> JobInfo {
        try await loop.submit { () throws -> JobInfo in try self.jobs.cancel(id) }
    }

    /// The co-signed receipts this node holds.
    public var storedReceipts: [Negotiation.Receipt] {
        ((try? ledger.ledger.receipts()) ?? []).filter { $0.source == .own }.map(\.receipt)
    }

    /// Registers the `jobs.*` control methods.
    func registerJobsControl(_ control: ControlServer) {
        control.register("jobs.run") { [unowned self] params, reply in
            guard let text = params?["spec"]?.stringValue, let outputRoot = params?["output_root"]?.stringValue else {
                reply(.failure(.invalidParams("expected {\"spec\": TOML, \"spec_dir\": DIR, \"output_root\": DIR, \"provider\"?: CONTACT, \"retries\"?: N}")))
                return
            }
            let spec: JobSpec
            do { spec = try JobSpec(toml: text) } catch { reply(.failure(.invalidParams("\(error)"))); return }
            let base = params?["spec_dir"]?.stringValue ?? FileManager.default.currentDirectoryPath
            var provider: Contact?
            if let p = params?["provider"]?.stringValue ?? spec.provider {
                if let c = try? Contact(parsing: p) {
                    provider = c
                } else if let id = PeerID(hex: p), let c = dht.instance.table.node(id)?.contact {
                    provider = c
                } else {
                    reply(.failure(.invalidParams("provider \(p) is neither a contact string nor a peer this node knows")))
                    return
                }
            }
            let paths = spec.inputs.map { $0.hasPrefix("/") ? $0 : base + "/" + $0 }
            let request = JobRequest(spec: spec, inputPaths: paths, outputRoot: outputRoot, provider: provider, retries: params?["retries"]?.intValue ?? 0)
            do throws(JobError) {
                let id = try jobs.startRenter(request)
                reply(.success(.object(["job_id": .string(id)])))
            } catch {
                reply(.failure(.invalidParams("\(error)")))
            }
        }
        control.register("jobs.list") { [unowned self] _, reply in
            reply(Result { try JSONValue(encoding: jobs.list()) }.mapError { .serverError("\($0)") })
        }
        control.register("jobs.show") { [unowned self] params, reply in
            guard let id = params?["id"]?.stringValue else { reply(.failure(.invalidParams("expected {\"id\": JOB-ID, \"log_offset\"?: N}"))); return }
            let info: JobInfo
            do throws(JobError) { info = try jobs.find(id) } catch { reply(.failure(.invalidParams("\(error)"))); return }
            let offset = UInt64(max(0, params?["log_offset"]?.intValue ?? 0))
            let bytes = JobLog.read(jobs.logPath(info.id), from: offset, max: 256 << 10)
            reply(Result {
                JSONValue.object(["job": try JSONValue(encoding: info), "log": .string(String(decoding: bytes, as: UTF8.self)),
                                  "log_next": .int(Int(offset) + bytes.count)])
            }.mapError { .serverError("\($0)") })
        }
        control.register("jobs.cancel") { [unowned self] params, reply in
            guard let id = params?["id"]?.stringValue else { reply(.failure(.invalidParams("expected {\"id\": JOB-ID}"))); return }
            do throws(JobError) {
                let info = try jobs.cancel(id)
                reply(Result { try JSONValue(encoding: info) }.mapError { .serverError("\($0)") })
            } catch {
                reply(.failure(.invalidParams("\(error)")))
            }
        }
    }
}

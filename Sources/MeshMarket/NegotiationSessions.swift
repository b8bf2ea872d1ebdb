import MeshCore
import MeshCrypto

extension Negotiation {
    /// Every step's timeout, milliseconds.
    public struct Timeouts: Sendable, Equatable {
        /// Provider: from the channel opening to the request.
        public var request: UInt64 = 15_000
        /// How long a quote stays valid (the provider waits this long for the accept).
        public var quoteValidity: UInt64 = 30_000
        /// Renter: from the request to the quote, and from the last input to `started`.
        public var reply: UInt64 = 30_000
        /// Transfers (inputs, outputs): longest time without progress.
        public var idle: UInt64 = 30_000
        /// Renter: how long past the job's time limit it waits for `finish`.
        public var runGrace: UInt64 = 30_000
        /// Both: from `finish` to the receipt, and from the receipt to the countersignature.
        public var receipt: UInt64 = 30_000

        /// The defaults.
        public init() {}
    }

    /// Why a job did not complete.
    public struct Failure: Error, Equatable, Sendable, CustomStringConvertible {
        /// The reason code.
        public var reason: Reason
        /// What happened, in words.
        public var note: String
        /// True if the other side said so (a decline or its cancel); false if this side decided.
        public var byPeer: Bool

        /// A failure.
        public init(_ reason: Reason, _ note: String, byPeer: Bool = false) {
            self.reason = reason
            self.note = note
            self.byPeer = byPeer
        }

        /// One line for people.
        public var description: String { "\(reason)\(byPeer ? " (said by the peer)" : ""): \(note)" }
    }

    /// How a session ended.
    public enum Outcome: Equatable, Sendable {
        /// With a receipt both sides signed.
        case completed(Receipt)
        /// Without one.
        case failed(Failure)
    }

    /// What a session asks its shell to do.
    public enum Directive: Equatable, Sendable {
        /// Send this message on the channel.
        case send(Message)
        /// Call `onTimeout(token:)` after this many milliseconds (a later timer replaces it; a
        /// session lists it before any directive the shell may complete at once).
        case timer(milliseconds: UInt64, token: UInt64)
        /// Provider: check that `data` hashes to `hash` (`chunkHash`) and, if it does, write it at
        /// `offset` into input `file` of the request's manifest; then call `onChunkStored(matches:now:)`.
        /// The shell may do this off the loop, but must report chunks in the order it got them.
        case writeInput(file: Int, offset: UInt64, data: ArraySlice<UInt8>, hash: [UInt8])
        /// Provider: every input arrived and verified; start the job, then call `onStarted` or `onStartFailed`.
        case run
        /// Provider: kill the job's process.
        case kill
        /// Provider: stream these outputs in order as chunks (calling `onProgress` as they go), then call `onOutputsSent`.
        case sendOutputs([FileEntry])
        /// Renter: stream the inputs in order as chunks (calling `onProgress`), then call `onInputsSent`.
        case sendInputs
        /// Renter: the provider says the job started.
        case started(at: UInt64)
        /// Renter: the job's output.
        case log(stream: UInt8, data: [UInt8])
        /// Renter: the job finished on the provider; outputs follow.
        case finished(Finish)
        /// Renter: as `writeInput`, for output `file` of the finish manifest.
        case writeOutput(file: Int, offset: UInt64, data: ArraySlice<UInt8>, hash: [UInt8])
        /// Renter: every output arrived and verified; move them into place.
        case outputsVerified
        /// Keep this receipt (both signatures verified).
        case store(Receipt)
        /// The session is over; close the channel.
        case close(Outcome)
    }

    /// Receives a manifest's files as ordered chunks of `chunkBytes` (a file's last may be
    /// shorter), in two steps: `admit` checks each chunk's place and size as it arrives; `stored`
    /// takes the shell's word, in arrival order, on whether the chunk's bytes match its hash, and
    /// checks each whole file's hash, which is built from the chunk hashes (so every byte is hashed
    /// once, and the hashing can happen off the loop).
    struct Receiver {
        let files: [FileEntry]
        /// Where the next chunk must start.
        private(set) var file = 0
        private(set) var offset: UInt64 = 0
        /// Chunks admitted and not yet stored: file, size, claimed hash.
        private var pending: [(file: Int, size: UInt64, hash: [UInt8])] = []
        private var pendingHead = 0
        private var checkedOffset: UInt64 = 0
        private var builder: FileHash.Builder?
        /// Bytes stored and matched so far.
        private(set) var bytes: UInt64 = 0

        init(_ files: [FileEntry]) {
            self.files = files
            skipEmpty()
        }

        /// True once the last chunk arrived (some may still be waiting for `stored`).
        var allArrived: Bool { file >= files.count }
        /// True once every chunk arrived and was stored and matched.
        var isComplete: Bool { allArrived && pendingHead == pending.count }

        /// False if an empty file claims a hash other than that of no bytes (it could never complete).
        static func isConsistent(_ files: [FileEntry]) -> Bool { files.allSatisfy { $0.size > 0 || $0.hash == Negotiation.emptyHash } }

        /// Admits one arriving chunk of `count` bytes claiming `hash`, or says what is wrong with
        /// its place or size; returns the file it belongs to.
        mutating func admit(file f: UInt16, offset o: UInt64, hash: [UInt8], count: Int) -> Result<Int, Failure> {
            guard !allArrived else { return .failure(Failure(.protocolError, "a chunk after the last file")) }
            guard Int(f) == file, o == offset else { return .failure(Failure(.protocolError, "chunk for file \(f) at \(o); expected file \(file) at \(offset)")) }
            let expected = Int(min(UInt64(chunkBytes), files[file].size - offset))
            guard count == expected else { return .failure(Failure(.protocolError, "a chunk of \(files[file].name) has \(count) bytes, not \(expected)")) }
            let index = file
            pending.append((index, UInt64(count), hash))
            offset += UInt64(count)
            if offset == files[file].size {
                file += 1
                offset = 0
                skipEmpty()
            }
            return .success(index)
        }

        /// The oldest admitted chunk was checked against its hash (and stored if it matched).
        mutating func stored(matches: Bool) -> Result<Void, Failure> {
            guard pendingHead < pending.count else { return .failure(Failure(.protocolError, "a chunk stored that never arrived")) }
            let chunk = pending[pendingHead]
            pendingHead += 1
            if pendingHead == pending.count {
                pending.removeAll(keepingCapacity: true)
                pendingHead = 0
            }
            let entry = files[chunk.file]
            guard matches else { return .failure(Failure(.protocolError, "a chunk of \(entry.name) does not match its hash")) }
            if builder == nil { builder = FileHash.Builder(size: entry.size) }
            builder!.add(chunk.hash)
            checkedOffset += chunk.size
            bytes += chunk.size
            if checkedOffset == entry.size {
                let digest = builder!.finalize()
                builder = nil
                checkedOffset = 0
                guard digest == entry.hash else { return .failure(Failure(.protocolError, "\(entry.name) does not match its hash")) }
            }
            return .success(())
        }

        private mutating func skipEmpty() {
            while file < files.count, files[file].size == 0 { file += 1 }
        }
    }

    /// The file hash of no bytes.
    public static let emptyHash = FileHash.file(size: 0, chunkHashes: [])

    /// A timer that is re-armed by state changes and checks idleness against the last progress.
    struct Watch {
        private(set) var token: UInt64 = 0
        private(set) var lastProgress: UInt64 = 0
        private(set) var limit: UInt64 = 0
        private(set) var idle = false

        /// Arms a deadline `ms` from now.
        mutating func arm(_ ms: UInt64, now: UInt64, idle: Bool = false) -> Directive {
            token &+= 1
            limit = ms
            lastProgress = now
            self.idle = idle
            return .timer(milliseconds: ms, token: token)
        }

        mutating func progress(_ now: UInt64) { lastProgress = now }

        mutating func disarm() { token &+= 1 }

        /// For a timer that fired: nil if stale, `.timer` to wait longer (idle watch with progress
        /// since), or an empty list meaning the deadline passed.
        mutating func fired(_ t: UInt64, now: UInt64) -> [Directive]? {
            guard t == token else { return nil }
            if idle, now < lastProgress + limit {
                token &+= 1
                return [.timer(milliseconds: lastProgress + limit - now, token: token)]
            }
            return []
        }
    }

    // MARK: Provider

    /// The provider's side of one job, as pure state: feed it the channel's messages and the
    /// executor's events, carry out its directives.
    public struct ProviderSession {
        /// Where the session stands.
        public enum State: String, Sendable {
            case awaitingRequest, quoted, receivingInputs, starting, running, sendingOutputs, awaitingCountersign, done
        }

        /// The current state.
        public private(set) var state = State.awaitingRequest
        /// The renter's key (from the channel's handshake).
        public let renter: PublicKey
        /// The policy requests are checked against.
        public let policy: ProviderPolicy
        /// Free job slots; the shell sets it before delivering each message.
        public var freeSlots = 1
        /// The job's ID, once requested.
        public private(set) var jobID: [UInt8] = []
        /// The spec, once requested.
        public private(set) var spec: JobSpec?
        /// The inputs, once requested.
        public private(set) var inputs: [FileEntry] = []
        /// The quote sent.
        public private(set) var quote: Quote?
        /// The finish report sent.
        public private(set) var finish: Finish?
        /// The receipt, once the renter countersigned.
        public private(set) var receipt: Receipt?
        /// When the job started (unix ms).
        public private(set) var startedAt: UInt64 = 0
        /// Input bytes received so far.
        public var inputBytesReceived: UInt64 { receiver?.bytes ?? 0 }
        /// True once the renter accepted the quote (the deal is on).
        public private(set) var accepted = false

        private let identity: SigningKey
        private let gpuModel: String
        private let timeouts: Timeouts
        private var watch = Watch()
        private var receiver: Receiver?
        private var pending: Receipt?

        /// A session for a channel from `renter`.
        public init(identity: SigningKey, renter: PublicKey, policy: ProviderPolicy, gpuModel: String, timeouts: Timeouts = Timeouts()) {
            self.identity = identity
            self.renter = renter
            self.policy = policy
            self.gpuModel = gpuModel
            self.timeouts = timeouts
        }

        /// True from the quote until the job's outputs are sent: the session holds a job slot.
        public var holdsSlot: Bool { [.quoted, .receivingInputs, .starting, .running, .sendingOutputs].contains(state) }

        /// Starts the request timeout.
        public mutating func start(now: UInt64) -> [Directive] { [watch.arm(timeouts.request, now: now)] }

        /// A message from the renter.
        public mutating func onMessage(_ bytes: [UInt8], now: UInt64) -> [Directive] {
            guard state != .done else { return [] }
            guard let message = Message(decoding: bytes) else { return violation("a malformed message") }
            switch (state, message) {
            case (_, .cancel(let reason, let note)):
                return end(.failed(Failure(reason, note.isEmpty ? "cancelled by the renter" : note, byPeer: true)))
            case (.awaitingRequest, .request(let id, let specBytes, let files)):
                return request(id, specBytes, files, now: now)
            case (.quoted, .accept(let id, let digest, let signature)):
                guard let quote, id == jobID, digest == quote.digest,
                      renter.isValidSignature(signature, for: Context.accept + digest) else { return violation("the accept does not match the quote") }
                guard now <= quote.validUntil else {
                    return decline(.expired, "the quote expired before it was accepted")
                }
                accepted = true
                let r = Receiver(inputs)
                receiver = r
                if r.isComplete { state = .starting; watch.disarm(); return [.run] }
                state = .receivingInputs
                return [watch.arm(timeouts.idle, now: now, idle: true)]
            case (.receivingInputs, .chunk(let f, let offset, let hash, let data)):
                switch receiver!.admit(file: f, offset: offset, hash: hash, count: data.count) {
                case .failure(let failure): return violation(failure.note)
                case .success(let index):
                    watch.progress(now)
                    return [.writeInput(file: index, offset: offset, data: data, hash: hash)]
                }
            case (.awaitingCountersign, .countersign(let signature)):
                return countersigned(signature)
            default:
                return violation("unexpected \(Self.name(message)) while \(state.rawValue)")
            }
        }

        private mutating func request(_ id: [UInt8], _ specBytes: [UInt8], _ files: [FileEntry], now: UInt64) -> [Directive] {
            jobID = id
            guard let spec = JobSpec(decoding: specBytes) else { return decline(.badRequest, "the job spec is malformed or invalid") }
            let names = spec.inputs.map(JobSpec.baseName)
            guard files.map(\.name) == names, files.allSatisfy({ !$0.name.contains("/") }), Receiver.isConsistent(files) else {
                return decline(.badRequest, "the input manifest does not list the spec's inputs in order")
            }
            self.spec = spec
            inputs = files
            let (total, overflow) = files.reduce((UInt64(0), false)) { acc, f in
                let (s, o) = acc.0.addingReportingOverflow(f.size)
                return (s, acc.1 || o)
            }
            if overflow { return decline(.limits, "the inputs are impossibly large") }
            if let (reason, note) = policy.evaluate(spec, inputBytes: total, renter: renter, freeSlots: freeSlots) {
                return decline(reason, note)
            }
            let q = Quote(jobID: id, provider: identity.publicKey, renter: renter, specDigest: Blake2b.hash(specBytes, outputLength: 32),
                          inputsDigest: Negotiation.digest(files), price: policy.price, validUntil: now + timeouts.quoteValidity).signed(by: identity)
            quote = q
            state = .quoted
            return [.send(.quote(q)), watch.arm(timeouts.quoteValidity, now: now)]
        }

        /// The shell checked the oldest unreported input chunk against its hash: `matches` (and
        /// then stored it) or not.
        public mutating func onChunkStored(matches: Bool, now: UInt64) -> [Directive] {
            guard state == .receivingInputs, receiver != nil else { return [] }
            if case .failure(let failure) = receiver!.stored(matches: matches) { return violation(failure.note) }
            guard receiver!.isComplete else { return [] }
            state = .starting
            watch.disarm()
            return [.run]
        }

        /// The job's process started.
        public mutating func onStarted(now: UInt64) -> [Directive] {
            guard state == .starting else { return [] }
            state = .running
            startedAt = now
            return [.send(.started(at: now))]
        }

        /// The job could not be started.
        public mutating func onStartFailed(_ note: String) -> [Directive] {
            guard state == .starting else { return [] }
            return end(.failed(Failure(.failed, note)), send: .cancel(reason: .failed, note: note), kill: false)  // nothing runs
        }

        /// Output from the job.
        public mutating func onLog(stream: UInt8, data: [UInt8]) -> [Directive] {
            guard state == .running, !data.isEmpty else { return [] }
            var out: [Directive] = []
            var start = 0
            while start < data.count {
                let end = min(data.count, start + maxLogBytes)
                out.append(.send(.log(stream: stream, data: Array(data[start..<end]))))
                start = end
            }
            return out
        }

        /// The job ended; `outputs` is what its output globs matched (hashed), `note` any remark.
        public mutating func onExited(status: Int32, signaled: Bool, timedOut: Bool, wallMilliseconds: UInt64, outputs: [FileEntry],
                                      note: String = "", now: UInt64) -> [Directive] {
            guard state == .running, let spec else { return [] }
            var outputs = outputs
            var note = note
            let total = outputs.reduce(UInt64(0)) { $0 &+ $1.size }
            if total > policy.maxOutputBytes || outputs.count > maxManifestFiles {
                note = "outputs (\(outputs.count) files, \(total) bytes) are over this provider's limit of \(policy.maxOutputBytes) bytes; none are sent"
                outputs = []
            }
            let f = Finish(exitStatus: status, signaled: signaled, timedOut: timedOut, wallMilliseconds: wallMilliseconds,
                           gpuMilliseconds: Receipt.gpuTime(gpus: spec.resources.gpus, wallMilliseconds: wallMilliseconds), outputs: outputs, note: note)
            finish = f
            state = .sendingOutputs
            var out: [Directive] = [.send(.finish(f))]
            if outputs.isEmpty {
                out += onOutputsSent(now: now)
            } else {
                out += [watch.arm(timeouts.idle, now: now, idle: true), .sendOutputs(outputs)]
            }
            return out
        }

        /// Output bytes went out (keeps the idle timeout from firing).
        public mutating func onProgress(now: UInt64) { watch.progress(now) }

        /// Every output was sent: sign and send the receipt.
        public mutating func onOutputsSent(now: UInt64) -> [Directive] {
            guard state == .sendingOutputs, let finish, let quote, let spec else { return [] }
            var r = Receipt(jobID: jobID, provider: identity.publicKey, renter: renter, specDigest: quote.specDigest, inputsDigest: quote.inputsDigest,
                            outputsDigest: Negotiation.digest(finish.outputs), price: quote.price, gpus: spec.resources.gpus,
                            gpuModel: spec.resources.gpus > 0 ? gpuModel : "", startedAt: startedAt, wallMilliseconds: finish.wallMilliseconds,
                            exitStatus: finish.exitStatus, signaled: finish.signaled, timedOut: finish.timedOut)
            r.signAsProvider(identity)
            pending = r
            state = .awaitingCountersign
            return [.send(.receipt(body: r.body, signature: r.providerSignature)), watch.arm(timeouts.receipt, now: now)]
        }

        /// The countersignature, handled apart because it ends the session with a receipt.
        private mutating func countersigned(_ signature: [UInt8]) -> [Directive] {
            guard var r = pending else { return violation("a countersignature with no receipt") }
            r.renterSignature = signature
            guard r.isValid else { return violation("the countersignature does not verify") }
            receipt = r
            return [.store(r)] + end(.completed(r))
        }

        /// A timer fired.
        public mutating func onTimeout(token: UInt64, now: UInt64) -> [Directive] {
            guard state != .done, let more = watch.fired(token, now: now) else { return [] }
            if !more.isEmpty { return more }
            switch state {
            case .awaitingRequest: return end(.failed(Failure(.timeout, "no request within \(timeouts.request) ms")))
            case .quoted: return decline(.expired, "the quote expired before it was accepted")
            case .receivingInputs: return abort(.timeout, "no input for \(timeouts.idle) ms")
            case .sendingOutputs: return abort(.timeout, "the renter took no output for \(timeouts.idle) ms")
            case .awaitingCountersign: return abort(.timeout, "the renter did not countersign the receipt within \(timeouts.receipt) ms")
            default: return []
            }
        }

        /// The channel closed.
        public mutating func onClosed() -> [Directive] {
            guard state != .done else { return [] }
            return end(.failed(Failure(.disconnected, "the renter went away")))
        }

        /// This side cancels (the provider's operator).
        public mutating func cancel(_ note: String) -> [Directive] {
            guard state != .done else { return [] }
            return abort(.cancelled, note)
        }

        /// This side cannot go on (a disk error, an executor failure).
        public mutating func fail(_ note: String) -> [Directive] {
            guard state != .done else { return [] }
            return abort(.failed, note)
        }

        private mutating func decline(_ reason: Reason, _ note: String) -> [Directive] {
            end(.failed(Failure(reason, note)), send: .decline(jobID: jobID.count == jobIDBytes ? jobID : [UInt8](repeating: 0, count: jobIDBytes), reason: reason, note: note))
        }

        private mutating func violation(_ note: String) -> [Directive] { abort(.protocolError, note) }

        /// Ends the session, telling the renter why.
        private mutating func abort(_ reason: Reason, _ note: String) -> [Directive] {
            end(.failed(Failure(reason, note)), send: .cancel(reason: reason, note: note))
        }

        /// Ends the session; a job that is starting or running is killed unless `kill` says otherwise.
        private mutating func end(_ outcome: Outcome, send: Message? = nil, kill: Bool? = nil) -> [Directive] {
            let killJob = kill ?? (state == .running || state == .starting)
            state = .done
            watch.disarm()
            return (killJob ? [.kill] : []) + (send.map { [.send($0)] } ?? []) + [.close(outcome)]
        }

        static func name(_ m: Message) -> String {
            switch m {
            case .request: "request"
            case .quote: "quote"
            case .decline: "decline"
            case .accept: "accept"
            case .chunk: "chunk"
            case .started: "started"
            case .log: "log"
            case .finish: "finish"
            case .receipt: "receipt"
            case .countersign: "countersign"
            case .cancel: "cancel"
            }
        }
    }

    // MARK: Renter

    /// The renter's side of one job, as pure state.
    public struct RenterSession {
        /// Where the session stands.
        public enum State: String, Sendable {
            case idle, awaitingQuote, sendingInputs, awaitingStart, running, receivingOutputs, awaitingReceipt, done
        }

        /// The current state.
        public private(set) var state = State.idle
        /// The job's ID.
        public let jobID: [UInt8]
        /// The spec.
        public let spec: JobSpec
        /// The inputs, hashed.
        public let inputs: [FileEntry]
        /// The provider's key (from the channel's handshake).
        public let provider: PublicKey
        /// The accepted quote.
        public private(set) var quote: Quote?
        /// The finish report.
        public private(set) var finish: Finish?
        /// The receipt, once countersigned.
        public private(set) var receipt: Receipt?
        /// Output bytes received (and checked) so far.
        public var outputBytesReceived: UInt64 { receiver?.bytes ?? 0 }

        private let identity: SigningKey
        private let specBytes: [UInt8]
        private let timeouts: Timeouts
        private let maxOutputBytes: UInt64
        private var watch = Watch()
        private var receiver: Receiver?
        private var heldReceipt: (body: [UInt8], signature: [UInt8])?

        /// A session for `spec` with `provider`; outputs over `maxOutputBytes` in total are refused.
        public init(identity: SigningKey, provider: PublicKey, jobID: [UInt8], spec: JobSpec, inputs: [FileEntry], maxOutputBytes: UInt64,
                    timeouts: Timeouts = Timeouts()) {
            self.identity = identity
            self.provider = provider
            self.jobID = jobID
            self.spec = spec
            self.specBytes = spec.encode()
            self.inputs = inputs
            self.maxOutputBytes = maxOutputBytes
            self.timeouts = timeouts
        }

        /// Sends the request.
        public mutating func start(now: UInt64) -> [Directive] {
            guard state == .idle else { return [] }
            state = .awaitingQuote
            return [.send(.request(jobID: jobID, spec: specBytes, inputs: inputs)), watch.arm(timeouts.reply, now: now)]
        }

        /// A message from the provider.
        public mutating func onMessage(_ bytes: [UInt8], now: UInt64) -> [Directive] {
            guard state != .done else { return [] }
            guard let message = Message(decoding: bytes) else { return violation("a malformed message") }
            switch (state, message) {
            case (_, .cancel(let reason, let note)):
                return end(.failed(Failure(reason, note.isEmpty ? "cancelled by the provider" : note, byPeer: true)))
            case (.awaitingQuote, .decline(let id, let reason, let note)):
                guard id == jobID else { return violation("a decline for another job") }
                return end(.failed(Failure(reason, note, byPeer: true)))
            case (.awaitingQuote, .quote(let q)):
                return quoted(q, now: now)
            case (.awaitingStart, .started(let at)):
                state = .running
                let limit = UInt64(spec.resources.timeLimitSeconds) * 1_000 + timeouts.runGrace  // spec limits keep this small
                return [.started(at: at), watch.arm(limit, now: now)]
            case (.running, .log(let stream, let data)):
                return [.log(stream: stream, data: data)]
            case (.running, .finish(let f)):
                let total = f.outputs.reduce(UInt64(0)) { $0 &+ $1.size }
                guard total <= maxOutputBytes else { return violation("outputs of \(total) bytes are over the \(maxOutputBytes) this renter accepts") }
                guard Receiver.isConsistent(f.outputs) else { return violation("the output manifest lists an empty file with a hash") }
                guard f.gpuMilliseconds == Receipt.gpuTime(gpus: spec.resources.gpus, wallMilliseconds: f.wallMilliseconds) else {
                    return violation("the finish report's GPU time does not follow from its wall time")
                }
                finish = f
                let r = Receiver(f.outputs)
                receiver = r
                if r.isComplete {
                    state = .awaitingReceipt
                    return [.finished(f), .outputsVerified, watch.arm(timeouts.receipt, now: now)]
                }
                state = .receivingOutputs
                return [.finished(f), watch.arm(timeouts.idle, now: now, idle: true)]
            case (.receivingOutputs, .chunk(let file, let offset, let hash, let data)):
                switch receiver!.admit(file: file, offset: offset, hash: hash, count: data.count) {
                case .failure(let failure): return violation(failure.note)
                case .success(let index):
                    watch.progress(now)
                    return [.writeOutput(file: index, offset: offset, data: data, hash: hash)]
                }
            case (.receivingOutputs, .receipt(let body, let signature)) where receiver!.allArrived && heldReceipt == nil:
                // The last chunks may still be being checked; the receipt waits for them.
                heldReceipt = (body, signature)
                return []
            case (.awaitingReceipt, .receipt(let body, let signature)):
                return receipted(body, signature)
            default:
                return violation("unexpected \(ProviderSession.name(message)) while \(state.rawValue)")
            }
        }

        /// The shell checked the oldest unreported output chunk against its hash: `matches` (and
        /// then stored it) or not.
        public mutating func onChunkStored(matches: Bool, now: UInt64) -> [Directive] {
            guard state == .receivingOutputs, receiver != nil else { return [] }
            if case .failure(let failure) = receiver!.stored(matches: matches) { return violation(failure.note) }
            guard receiver!.isComplete else { return [] }
            state = .awaitingReceipt
            var out: [Directive] = [.outputsVerified, watch.arm(timeouts.receipt, now: now)]
            if let (body, signature) = heldReceipt {
                heldReceipt = nil
                out += receipted(body, signature)
            }
            return out
        }

        private mutating func quoted(_ q: Quote, now: UInt64) -> [Directive] {
            guard q.jobID == jobID, q.provider == provider, q.renter == identity.publicKey, q.specDigest == Blake2b.hash(specBytes, outputLength: 32),
                  q.inputsDigest == Negotiation.digest(inputs), q.isValid else { return violation("the quote does not match the request or its signature") }
            guard now <= q.validUntil else { return abort(.expired, "the quote arrived already expired") }
            if let max = spec.maxPrice, q.price > max {
                return abort(.price, "quoted \(q.price) points per GPU-hour, above the maximum of \(max)")
            }
            quote = q
            let digest = q.digest
            let accept = Message.accept(jobID: jobID, quoteDigest: digest, signature: identity.signature(for: Context.accept + digest))
            state = .sendingInputs
            // The timer goes first: a shell may finish sending at once and arm the next one.
            return [.send(accept), watch.arm(timeouts.idle, now: now, idle: true), .sendInputs]
        }

        private mutating func receipted(_ body: [UInt8], _ signature: [UInt8]) -> [Directive] {
            guard let quote, let finish, var r = Receipt(body: body) else { return violation("a malformed receipt") }
            r.providerSignature = signature
            guard r.jobID == jobID, r.provider == provider, r.renter == identity.publicKey, r.specDigest == quote.specDigest,
                  r.inputsDigest == quote.inputsDigest, r.outputsDigest == Negotiation.digest(finish.outputs), r.price == quote.price,
                  r.gpus == spec.resources.gpus, r.wallMilliseconds == finish.wallMilliseconds, r.gpuMilliseconds == finish.gpuMilliseconds,
                  r.charge == Receipt.charge(price: r.price, gpuMilliseconds: r.gpuMilliseconds), r.exitStatus == finish.exitStatus,
                  r.signaled == finish.signaled, r.timedOut == finish.timedOut else {
                return violation("the receipt does not match the quote and the finish report")
            }
            guard r.providerSignatureValid else { return violation("the receipt's signature does not verify") }
            r.signAsRenter(identity)
            receipt = r
            return [.send(.countersign(signature: r.renterSignature)), .store(r)] + end(.completed(r))
        }

        /// Input bytes went out (keeps the idle timeout from firing).
        public mutating func onProgress(now: UInt64) { watch.progress(now) }

        /// Every input was sent.
        public mutating func onInputsSent(now: UInt64) -> [Directive] {
            guard state == .sendingInputs else { return [] }
            state = .awaitingStart
            return [watch.arm(timeouts.reply, now: now)]
        }

        /// A timer fired.
        public mutating func onTimeout(token: UInt64, now: UInt64) -> [Directive] {
            guard state != .done, let more = watch.fired(token, now: now) else { return [] }
            if !more.isEmpty { return more }
            let note: String
            switch state {
            case .awaitingQuote: note = "no quote within \(timeouts.reply) ms"
            case .sendingInputs: note = "the provider took no input for \(timeouts.idle) ms"
            case .awaitingStart: note = "the job did not start within \(timeouts.reply) ms of the inputs"
            case .running: note = "no finish report within the job's time limit and \(timeouts.runGrace) ms"
            case .receivingOutputs: note = "no output for \(timeouts.idle) ms"
            case .awaitingReceipt: note = "no receipt within \(timeouts.receipt) ms"
            default: return []
            }
            return abort(.timeout, note)
        }

        /// The channel closed.
        public mutating func onClosed() -> [Directive] {
            guard state != .done else { return [] }
            let note = state == .idle || state == .awaitingQuote ? "the provider closed the channel" : "the provider went away while the job was \(state.rawValue)"
            return end(.failed(Failure(.disconnected, note)))
        }

        /// This side cancels (Ctrl-C, `gpumesh job cancel`).
        public mutating func cancel(_ note: String) -> [Directive] {
            guard state != .done else { return [] }
            return abort(.cancelled, note)
        }

        /// This side cannot go on (a disk error writing outputs).
        public mutating func fail(_ note: String) -> [Directive] {
            guard state != .done else { return [] }
            return abort(.failed, note)
        }

        private mutating func violation(_ note: String) -> [Directive] { abort(.protocolError, note) }

        /// Ends the session, telling the provider why.
        private mutating func abort(_ reason: Reason, _ note: String) -> [Directive] {
            end(.failed(Failure(reason, note)), send: .cancel(reason: reason, note: note))
        }

        private mutating func end(_ outcome: Outcome, send: Message? = nil) -> [Directive] {
            state = .done
            watch.disarm()
            return (send.map { [.send($0)] } ?? []) + [.close(outcome)]
        }
    }
}

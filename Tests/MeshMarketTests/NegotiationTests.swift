import MeshCore
import Foundation
import MeshCrypto
import MeshJobs
@testable import MeshMarket
import Testing

/// Drives a provider and a renter session against each other in memory, playing both shells:
/// inputs and outputs are byte arrays, the "job" writes fixed outputs.
struct Harness {
    typealias D = Negotiation.Directive
    let providerKey = SigningKey()
    let renterKey = SigningKey()
    var provider: Negotiation.ProviderSession
    var renter: Negotiation.RenterSession
    var now: UInt64 = 1_000_000
    var inputData: [[UInt8]]
    var outputData: [[UInt8]]
    var outputNames: [String]
    var written: [Int: [UInt8]] = [:]
    var received: [Int: [UInt8]] = [:]
    var providerOutcome: Negotiation.Outcome?
    var renterOutcome: Negotiation.Outcome?
    var stored: [Negotiation.Receipt] = []
    var logs: [UInt8] = []
    var killed = false
    /// Messages in flight, to the provider (true) or the renter (false).
    var wire: [(toProvider: Bool, bytes: [UInt8])] = []
    /// Let the job run when asked (false: leave it running).
    var autoRun = true
    /// Report chunk stores only when no message is in flight (as a shell that checks chunks off
    /// the loop may), instead of at once.
    var deferStores = false
    /// Chunk checks not yet reported: for the provider (true) or the renter, and whether they matched.
    var pendingStores: [(provider: Bool, matches: Bool)] = []
    /// A chunk did not match its hash.
    var mismatched = false

    static func entry(_ name: String, _ data: [UInt8]) -> Negotiation.FileEntry {
        let chunks = stride(from: 0, to: data.count, by: Negotiation.chunkBytes).map { Negotiation.chunkHash(Array(data[$0..<min(data.count, $0 + Negotiation.chunkBytes)])) }
        return Negotiation.FileEntry(name: name, size: UInt64(data.count), hash: FileHash.file(size: UInt64(data.count), chunkHashes: chunks))
    }

    static func policy(price: Price = Price(millipoints: 1000)) -> ProviderPolicy {
        ProviderPolicy(price: price, executors: [.sandbox], images: ["python:*"], maxDurationSeconds: 600, maxInputBytes: 1 << 20,
                       maxOutputBytes: 1 << 20, maxMemoryMiB: 4096,
                       gpus: [GPUGroup(vendor: "nvidia", slug: "rtx-4090", vramMiB: 24_564, count: 2)], cpuCores: 8, diskFreeMiB: 10_000)
    }

    static func spec(gpus: Int = 1, inputs: [String] = ["a.bin", "empty", "b.txt"], maxPrice: Price? = Price(millipoints: 2000)) -> JobSpec {
        var r = JobSpec.Resources()
        r.gpus = gpus
        r.timeLimitSeconds = 60
        return try! JobSpec(name: "t", executor: .sandbox, image: nil, command: ["sh", "-c", "true"], environment: [:], inputs: inputs,
                       outputs: ["out/*"], resources: r, maxPrice: maxPrice, provider: nil)
    }

    init(spec: JobSpec = Harness.spec(), policy: ProviderPolicy = Harness.policy(), inputs: [[UInt8]]? = nil,
         outputs: [(String, [UInt8])] = [("out/model.bin", Array(repeating: 7, count: 700_000)), ("out/empty", []), ("out/log.txt", Array("done\n".utf8))]) {
        inputData = inputs ?? [(0..<600_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }, [], Array("hello".utf8)]
        outputData = outputs.map(\.1)
        outputNames = outputs.map(\.0)
        provider = Negotiation.ProviderSession(identity: providerKey, renter: renterKey.publicKey, policy: policy, gpuModel: "rtx-4090")
        let entries = zip(spec.inputs.map(JobSpec.baseName), inputData).map { Harness.entry($0, $1) }
        renter = Negotiation.RenterSession(identity: renterKey, provider: providerKey.publicKey, jobID: Array(repeating: 0xab, count: 16), spec: spec,
                                           inputs: entries, maxOutputBytes: 10 << 20)
    }

    static func chunks(_ files: [[UInt8]]) -> [[UInt8]] {
        var out: [[UInt8]] = []
        for (i, data) in files.enumerated() {
            var offset = 0
            while offset < data.count {
                let piece = Array(data[offset..<min(data.count, offset + Negotiation.chunkBytes)])
                out.append(Negotiation.Message.chunk(file: UInt16(i), offset: UInt64(offset), hash: Negotiation.chunkHash(piece), data: piece[...]).encoded)
                offset += piece.count
            }
        }
        return out
    }

    mutating func providerDo(_ ds: [D]) {
        for d in ds {
            switch d {
            case .send(let m): wire.append((false, m.encoded))
            case .writeInput(let f, let offset, let data, let hash):
                let matches = Negotiation.chunkHash(data) == hash
                // Later chunks may still be written after one that did not match, until the
                // session hears of it (its files are dropped then).
                if matches && !mismatched {
                    #expect(UInt64(written[f, default: []].count) == offset)
                    written[f, default: []] += data
                }
                mismatched = mismatched || !matches
                if deferStores { pendingStores.append((true, matches)) } else { providerDo(provider.onChunkStored(matches: matches, now: now)) }
            case .run:
                providerDo(provider.onStarted(now: now))
                if autoRun { finishJob() }
            case .kill: killed = true
            case .sendOutputs(let files):
                #expect(files.map(\.name) == outputNames)
                for c in Self.chunks(outputData) { wire.append((false, c)) }
                providerDo(provider.onOutputsSent(now: now))
            case .store(let r): stored.append(r)
            case .close(let o): providerOutcome = o
            case .timer: break
            default: Issue.record("provider got a renter directive \(d)")
            }
        }
    }

    mutating func finishJob() {
        providerDo(provider.onLog(stream: 1, data: Array("working\n".utf8)))
        let manifest = zip(outputNames, outputData).map { Harness.entry($0, $1) }
        providerDo(provider.onExited(status: 0, signaled: false, timedOut: false, wallMilliseconds: 90_000, outputs: manifest, now: now))
    }

    mutating func renterDo(_ ds: [D]) {
        for d in ds {
            switch d {
            case .send(let m): wire.append((true, m.encoded))
            case .sendInputs:
                for c in Self.chunks(inputData) { wire.append((true, c)) }
                renterDo(renter.onInputsSent(now: now))
            case .log(_, let data): logs += data
            case .writeOutput(let f, let offset, let data, let hash):
                let matches = Negotiation.chunkHash(data) == hash
                if matches && !mismatched {
                    #expect(UInt64(received[f, default: []].count) == offset)
                    received[f, default: []] += data
                }
                mismatched = mismatched || !matches
                if deferStores { pendingStores.append((false, matches)) } else { renterDo(renter.onChunkStored(matches: matches, now: now)) }
            case .store(let r): stored.append(r)
            case .close(let o): renterOutcome = o
            case .timer, .started, .finished, .outputsVerified: break
            default: Issue.record("renter got a provider directive \(d)")
            }
        }
    }

    /// Delivers messages until none are left (or `limit` were delivered).
    mutating func pump(limit: Int = .max) {
        var n = 0
        while !wire.isEmpty || !pendingStores.isEmpty, n < limit {
            if wire.isEmpty {
                let (toProvider, matches) = pendingStores.removeFirst()
                if toProvider { providerDo(provider.onChunkStored(matches: matches, now: now)) } else { renterDo(renter.onChunkStored(matches: matches, now: now)) }
                continue
            }
            let (toProvider, bytes) = wire.removeFirst()
            if toProvider { providerDo(provider.onMessage(bytes, now: now)) } else { renterDo(renter.onMessage(bytes, now: now)) }
            n += 1
        }
    }

    mutating func begin() {
        providerDo(provider.start(now: now))
        renterDo(renter.start(now: now))
    }
}

@Suite("Negotiation")
struct NegotiationTests {
    @Test("a job with inputs and outputs runs to a receipt both keys verify (chunk checks reported at once, or late)",
          arguments: [false, true])
    func happyPath(deferStores: Bool) throws {
        var h = Harness()
        h.deferStores = deferStores
        h.begin()
        h.pump()
        let receipt = try #require(h.renter.receipt)
        #expect(h.providerOutcome == .completed(receipt) && h.renterOutcome == .completed(receipt))
        #expect(receipt.isValid && receipt.providerSignatureValid && receipt.renterSignatureValid)
        #expect(h.stored.count == 2 && h.stored.allSatisfy { $0 == receipt })
        #expect(h.written[0] == h.inputData[0] && h.written[1] == nil && h.written[2] == h.inputData[2])
        #expect(h.received[0] == h.outputData[0] && h.received[1] == nil && h.received[2] == h.outputData[2])
        #expect(h.logs == Array("working\n".utf8))
        #expect(receipt.gpus == 1 && receipt.gpuModel == "rtx-4090" && receipt.wallMilliseconds == 90_000 && receipt.gpuMilliseconds == 90_000)
        #expect(receipt.charge == 25)  // 1 point/GPU-hour for 90 GPU-seconds = 25 millipoints
        #expect(receipt.outputsDigest == Negotiation.digest(zip(h.outputNames, h.outputData).map { Harness.entry($0, $1) }))
        // The wire form round-trips, and any change to the body breaks a signature.
        let decoded = try #require(Negotiation.Receipt(decoding: receipt.encoded))
        #expect(decoded == receipt && decoded.isValid)
        var forged = receipt
        forged.charge = 1
        #expect(!forged.isValid)
        var other = receipt
        other.renterSignature = SigningKey().signature(for: Array("gpumesh/receipt/renter/v1".utf8) + receipt.body)
        #expect(!other.isValid)
    }

    @Test("sessions are values: a copy fed mid-transfer leaves the original's hashing intact")
    func copies() throws {
        var h = Harness()
        h.begin()
        while h.provider.inputBytesReceived == 0 { h.pump(limit: 1) }
        let next = try #require(h.wire.first { $0.toProvider })
        var copy = h.provider
        #expect(copy.onMessage(next.bytes, now: h.now).count == 1)
        #expect(copy.onChunkStored(matches: true, now: h.now).isEmpty)
        h.pump()
        #expect(h.renter.receipt != nil)
    }

    @Test("a file hash is built from its chunk hashes and binds the size; JobFiles computes the same")
    func fileHash() throws {
        let data = (0..<(Negotiation.chunkBytes * 2 + 5)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let e = Harness.entry("x", data)
        #expect(e.hash != Harness.entry("x", Array(data.dropLast())).hash)
        #expect(FileHash.file(size: 1, chunkHashes: []) != Negotiation.emptyHash)
        let path = NSTemporaryDirectory() + "gm-filehash-\(UInt32.random(in: 0...UInt32.max))"
        _ = FileManager.default.createFile(atPath: path, contents: Data(data))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let h = try JobFiles.hashChunks(path: path)
        #expect(h.size == UInt64(data.count) && h.hash == e.hash && h.chunks.count == 3)
        // A chunk shorter than the chunk size, where a full one was due, is refused.
        var r = Negotiation.Receiver([e])
        guard case .failure = r.admit(file: 0, offset: 0, hash: Negotiation.chunkHash(Array(data[0..<10])), count: 10) else {
            Issue.record("a short chunk was accepted"); return
        }
        // A store reported for a chunk that never arrived is refused too.
        guard case .failure = r.stored(matches: true) else { Issue.record("a store without a chunk was accepted"); return }
    }

    @Test("charges round up to a whole millipoint and never overflow")
    func charges() {
        #expect(Negotiation.Receipt.charge(price: Price(millipoints: 1000), gpuMilliseconds: 3_600_000) == 1000)
        #expect(Negotiation.Receipt.charge(price: Price(millipoints: 1000), gpuMilliseconds: 1) == 1)
        #expect(Negotiation.Receipt.charge(price: Price(millipoints: 1000), gpuMilliseconds: 0) == 0)
        #expect(Negotiation.Receipt.charge(price: Price(millipoints: .max), gpuMilliseconds: .max) == .max)
        #expect(Negotiation.Receipt.gpuTime(gpus: 16, wallMilliseconds: .max) == .max)
    }

    @Test("requests outside policy are declined with their reason before anything runs",
          arguments: [
            ("price", Negotiation.Reason.price), ("executor", .executor), ("resources", .resources), ("vram", .resources),
            ("memory", .resources), ("allow", .notAllowed), ("busy", .busy), ("image", .image), ("time", .limits), ("input", .limits),
          ])
    func declines(_ c: (String, Negotiation.Reason)) throws {
        var policy = Harness.policy()
        var r = JobSpec.Resources()
        r.gpus = 1
        r.timeLimitSeconds = 60
        var executor = Executor.sandbox
        var image: String?
        var maxPrice: Price? = Price(millipoints: 2000)
        var inputs: [[UInt8]]?
        switch c.0 {
        case "price": maxPrice = Price(millipoints: 999)
        case "executor": executor = .docker; image = "python:3.12"
        case "resources": r.gpus = 3
        case "vram": r.minVRAMMiB = 48_000
        case "memory": r.memoryMiB = 8192
        case "allow": policy.allowRenters = [PeerID(publicKey: SigningKey().publicKey)]
        case "image": policy.executors = [.sandbox, .docker]; executor = .docker; image = "evil/miner:latest"
        case "time": r.timeLimitSeconds = 601
        case "input": inputs = [Array(repeating: 1, count: (1 << 20) + 1), [], [1]]
        default: break
        }
        let spec = try JobSpec(name: "t", executor: executor, image: image, command: ["true"], environment: [:], inputs: ["a", "b", "c"],
                           outputs: [], resources: r, maxPrice: maxPrice, provider: nil)
        #expect(spec.problem == nil)
        var h = Harness(spec: spec, policy: policy, inputs: inputs)
        if c.0 == "busy" { h.provider.freeSlots = 0 }
        h.begin()
        h.pump()
        guard case .failed(let failure) = h.renterOutcome else { Issue.record("renter did not fail: \(String(describing: h.renterOutcome))"); return }
        #expect(failure.reason == c.1 && failure.byPeer && !failure.note.isEmpty)
        #expect(h.written.isEmpty && !h.killed && h.stored.isEmpty)
        #expect(h.provider.state == Negotiation.ProviderSession.State.done && !h.provider.holdsSlot)
    }

    @Test("an image under an allowed prefix is accepted")
    func imagePrefix() {
        let p = Harness.policy()
        #expect(p.allows(image: "python:3.12-slim") && !p.allows(image: "pythonic") && !p.allows(image: "docker.io/python:3"))
    }

    @Test("a renter refuses a quote over its maximum price and a provider's forged quote")
    func renterChecksQuote() throws {
        // Provider price 1.5 with the renter's maximum 1.0: the provider declines itself, so
        // hand-craft a quote above the maximum to see the renter refuse it.
        var h = Harness(spec: Harness.spec(maxPrice: Price(millipoints: 1000)))
        h.renterDo(h.renter.start(now: h.now))
        let q = Negotiation.Quote(jobID: h.renter.jobID, provider: h.providerKey.publicKey, renter: h.renterKey.publicKey,
                                  specDigest: Blake2b.hash(h.renter.spec.encode(), outputLength: 32), inputsDigest: Negotiation.digest(h.renter.inputs),
                                  price: Price(millipoints: 1001), validUntil: h.now + 1000).signed(by: h.providerKey)
        h.wire = []
        h.renterDo(h.renter.onMessage(Negotiation.Message.quote(q).encoded, now: h.now))
        guard case .failed(let f) = h.renterOutcome else { Issue.record("accepted"); return }
        #expect(f.reason == .price)
        #expect(h.wire.map { Negotiation.Message(decoding: $0.bytes) } == [.cancel(reason: .price, note: f.note)])

        var g = Harness()
        g.renterDo(g.renter.start(now: g.now))
        let forged = Negotiation.Quote(jobID: g.renter.jobID, provider: g.providerKey.publicKey, renter: g.renterKey.publicKey,
                                       specDigest: Blake2b.hash(g.renter.spec.encode(), outputLength: 32), inputsDigest: Negotiation.digest(g.renter.inputs),
                                       price: Price(millipoints: 1), validUntil: g.now + 1000).signed(by: SigningKey())
        g.renterDo(g.renter.onMessage(Negotiation.Message.quote(forged).encoded, now: g.now))
        guard case .failed(let f2) = g.renterOutcome else { Issue.record("accepted a forged quote"); return }
        #expect(f2.reason == .protocolError)
    }

    @Test("the renter's cancel kills the running job; the provider's cancel ends the renter's session")
    func cancels() {
        var h = Harness()
        h.autoRun = false
        h.begin()
        h.pump()
        #expect(h.provider.state == .running && h.renter.state == .running)
        h.renterDo(h.renter.cancel("Ctrl-C"))
        h.pump()
        #expect(h.killed)
        guard case .failed(let f) = h.providerOutcome else { Issue.record("provider still going"); return }
        #expect(f.reason == .cancelled && f.byPeer && f.note == "Ctrl-C")
        // The job's exit after the kill changes nothing.
        #expect(h.provider.onExited(status: 9, signaled: true, timedOut: false, wallMilliseconds: 5, outputs: [], now: h.now).isEmpty)

        var g = Harness()
        g.autoRun = false
        g.begin()
        g.pump()
        g.providerDo(g.provider.cancel("maintenance"))
        g.pump()
        #expect(g.killed)
        guard case .failed(let f2) = g.renterOutcome else { Issue.record("renter still going"); return }
        #expect(f2.reason == .cancelled && f2.byPeer)
    }

    @Test("the channel closing mid-job kills the job and fails the renter with a clear reason")
    func disconnects() {
        var h = Harness()
        h.autoRun = false
        h.begin()
        h.pump()
        h.providerDo(h.provider.onClosed())
        h.renterDo(h.renter.onClosed())
        #expect(h.killed)
        guard case .failed(let f) = h.renterOutcome else { Issue.record("renter still going"); return }
        #expect(f.reason == .disconnected && f.note.contains("running"))
    }

    @Test("every timeout fires in its state, stale timers are ignored, progress defers idle timeouts")
    func timeouts() throws {
        // Provider: no request.
        var h = Harness()
        h.providerDo(h.provider.start(now: h.now))
        #expect(h.provider.onTimeout(token: 99, now: h.now + 20_000).isEmpty)
        h.providerDo(h.provider.onTimeout(token: 1, now: h.now + 15_000))
        guard case .failed(let f) = h.providerOutcome else { Issue.record("no timeout"); return }
        #expect(f.reason == .timeout)

        // Provider: an accept after the quote's validity is refused as expired.
        var e = Harness()
        e.begin()
        e.pump(limit: 1)  // the request
        let quoteBytes = e.wire.removeFirst().bytes
        e.renterDo(e.renter.onMessage(quoteBytes, now: e.now))
        let accept = e.wire.removeFirst().bytes
        e.wire = []
        e.providerDo(e.provider.onMessage(accept, now: e.now + 30_001))
        guard case .failed(let f2) = e.providerOutcome else { Issue.record("expired accept taken"); return }
        #expect(f2.reason == .expired)

        // Renter: idle inputs with progress re-arm, then time out.
        var r = Harness()
        var ds = r.renter.start(now: 0)
        ds += r.renter.onMessage(quote(for: r, now: 0), now: 0)
        guard let (ms, token) = ds.lazy.compactMap({ if case .timer(let m, let t) = $0 { (m, t) } else { nil } }).last else { Issue.record("no idle timer"); return }
        #expect(ms == 30_000)
        r.renter.onProgress(now: 20_000)
        let again = r.renter.onTimeout(token: token, now: 30_000)
        guard case .timer(let rest, let t2) = again.first, again.count == 1 else { Issue.record("idle timer did not re-arm: \(again)"); return }
        #expect(rest == 20_000)
        r.renterDo(r.renter.onTimeout(token: t2, now: 50_000))
        guard case .failed(let f3) = r.renterOutcome else { Issue.record("no idle timeout"); return }
        #expect(f3.reason == .timeout && f3.note.contains("input"))
    }

    func quote(for h: Harness, now: UInt64) -> [UInt8] {
        Negotiation.Message.quote(Negotiation.Quote(jobID: h.renter.jobID, provider: h.providerKey.publicKey, renter: h.renterKey.publicKey,
                                                    specDigest: Blake2b.hash(h.renter.spec.encode(), outputLength: 32),
                                                    inputsDigest: Negotiation.digest(h.renter.inputs), price: Price(millipoints: 1000),
                                                    validUntil: now + 30_000).signed(by: h.providerKey)).encoded
    }

    @Test("a tampered chunk, an out-of-order chunk or a wrong whole-file hash ends the session before the job runs",
          arguments: [false, true])
    func badChunks(deferStores: Bool) {
        for variant in 0..<3 {
            var h = Harness()
            h.deferStores = deferStores
            h.begin()
            h.pump(limit: 2)  // request, quote -> accept, chunks queued
            var queued = h.wire.filter { $0.toProvider }
            #expect(queued.count >= 4)
            switch variant {
            case 0:  // flip a data byte in the first chunk
                queued[1].bytes[queued[1].bytes.count - 1] ^= 1
            case 1:  // swap two chunks
                queued.swapAt(1, 2)
            default:  // a chunk whose own hash matches but whose file does not: replace the last chunk's data
                let data: [UInt8] = Array("hellp".utf8)
                queued[queued.count - 1].bytes = Negotiation.Message.chunk(file: 2, offset: 0, hash: Negotiation.chunkHash(data), data: data[...]).encoded
            }
            h.wire = queued
            h.pump()
            #expect(h.provider.state == .done)
            guard case .failed(let f) = h.providerOutcome else { Issue.record("variant \(variant) accepted"); continue }
            #expect(f.reason == .protocolError)
            guard case .failed = h.renterOutcome else { Issue.record("renter not told"); continue }
        }
    }

    @Test("a receipt that does not match the finish report is refused and not countersigned")
    func badReceipt() {
        var h = Harness()
        h.begin()
        // Deliver everything except the receipt, then forge one with a larger charge.
        while let next = h.wire.first {
            if case .receipt = Negotiation.Message(decoding: next.bytes) { break }
            h.pump(limit: 1)
        }
        h.wire.removeFirst()
        var r = Negotiation.Receipt(jobID: h.renter.jobID, provider: h.providerKey.publicKey, renter: h.renterKey.publicKey,
                                    specDigest: h.renter.quote!.specDigest, inputsDigest: h.renter.quote!.inputsDigest,
                                    outputsDigest: Negotiation.digest(h.renter.finish!.outputs), price: h.renter.quote!.price, gpus: 1,
                                    gpuModel: "rtx-4090", startedAt: 0, wallMilliseconds: 900_000, exitStatus: 0, signaled: false, timedOut: false)
        r.signAsProvider(h.providerKey)
        h.renterDo(h.renter.onMessage(Negotiation.Message.receipt(body: r.body, signature: r.providerSignature).encoded, now: h.now))
        guard case .failed(let f) = h.renterOutcome else { Issue.record("countersigned a wrong receipt"); return }
        #expect(f.reason == .protocolError && h.stored.isEmpty)
    }

    @Test("out-of-order messages in every state close the session without a crash")
    func outOfOrder() {
        let k = SigningKey()
        let junk: [Negotiation.Message] = [
            .request(jobID: Array(repeating: 1, count: 16), spec: Harness.spec().encode(), inputs: []),
            .accept(jobID: Array(repeating: 1, count: 16), quoteDigest: Array(repeating: 0, count: 32), signature: Array(repeating: 0, count: 64)),
            .chunk(file: 0, offset: 0, hash: Negotiation.chunkHash([1]), data: [1]),
            .started(at: 1), .log(stream: 1, data: [1]),
            .finish(Negotiation.Finish(exitStatus: 0, signaled: false, timedOut: false, wallMilliseconds: 1, gpuMilliseconds: 1, outputs: [])),
            .receipt(body: [1, 2], signature: k.signature(for: [1])), .countersign(signature: Array(repeating: 0, count: 64)),
            .decline(jobID: Array(repeating: 2, count: 16), reason: .busy, note: ""),
        ]
        // Walk the happy path; at each step, copies of both sessions receive each junk message:
        // either it was acceptable there, or the session ends with a protocol error and tells the peer.
        func check(_ ds: [Negotiation.Directive]) -> Bool {
            guard case .close(.failed(let f)) = ds.last else { return false }
            // A malformed request is declined as such; anything else is a protocol error.
            #expect(f.reason == .protocolError || f.reason == .badRequest)
            #expect(ds.contains { if case .send(.cancel(.protocolError, _)) = $0 { true } else if case .send(.decline(_, .badRequest, _)) = $0 { true } else { false } })
            return true
        }
        var h = Harness()
        h.begin()
        var steps = 0
        var refused = 0
        while !h.wire.isEmpty {
            for m in junk {
                var p = h.provider
                var r = h.renter
                if check(p.onMessage(m.encoded, now: h.now)) { refused += 1 }
                if check(r.onMessage(m.encoded, now: h.now)) { refused += 1 }
            }
            h.pump(limit: 1)
            steps += 1
        }
        #expect(steps > 5 && refused > steps * 10)
        #expect(h.renter.receipt != nil)
    }

    @Test("random bytes and mutated messages never crash either side")
    func fuzz() {
        var rng = SplitMix64(seed: 11)
        var h = Harness()
        h.begin()
        // Snapshots of both sessions at every step of a good run, and the messages of that run.
        var transcript: [[UInt8]] = []
        var snapshots: [(Negotiation.ProviderSession, Negotiation.RenterSession)] = []
        while !h.wire.isEmpty {
            transcript.append(h.wire[0].bytes)
            snapshots.append((h.provider, h.renter))
            h.pump(limit: 1)
        }
        for _ in 0..<5_000 {
            var bytes = transcript[Int(rng.next() % UInt64(transcript.count))]
            if bytes.count > 4_096 { bytes = Array(bytes.prefix(4_096)) }
            switch rng.next() % 3 {
            case 0: bytes[Int(rng.next() % UInt64(bytes.count))] ^= UInt8(truncatingIfNeeded: rng.next() | 1)
            case 1: bytes = Array(bytes.prefix(Int(rng.next() % UInt64(bytes.count))))
            default: bytes = (0..<Int(rng.next() % 64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            }
            var (p, r) = snapshots[Int(rng.next() % UInt64(snapshots.count))]
            _ = p.onMessage(bytes, now: h.now)
            _ = r.onMessage(bytes, now: h.now)
            _ = Negotiation.Receipt(decoding: bytes)
        }
    }

    @Test("every message round-trips through its wire form")
    func roundTrips() {
        let k = SigningKey()
        let e = Harness.entry("dir/f", [1, 2, 3])
        let q = Negotiation.Quote(jobID: Array(repeating: 3, count: 16), provider: k.publicKey, renter: SigningKey().publicKey,
                                  specDigest: Array(repeating: 4, count: 32), inputsDigest: Array(repeating: 5, count: 32),
                                  price: Price(millipoints: 1500), validUntil: 99).signed(by: k)
        let messages: [Negotiation.Message] = [
            .request(jobID: Array(repeating: 1, count: 16), spec: [1, 2, 3], inputs: [Harness.entry("a", [9])]),
            .quote(q), .decline(jobID: Array(repeating: 1, count: 16), reason: .busy, note: "full"),
            .accept(jobID: Array(repeating: 1, count: 16), quoteDigest: q.digest, signature: Array(repeating: 7, count: 64)),
            .chunk(file: 3, offset: 1 << 40, hash: Negotiation.chunkHash([5]), data: [5]), .started(at: 123), .log(stream: 2, data: [10]),
            .finish(Negotiation.Finish(exitStatus: -1, signaled: true, timedOut: true, wallMilliseconds: 5, gpuMilliseconds: 10, outputs: [e], note: "n")),
            .receipt(body: [1], signature: Array(repeating: 1, count: 64)), .countersign(signature: Array(repeating: 2, count: 64)),
            .cancel(reason: .timeout, note: String(repeating: "é", count: 400)),
        ]
        for m in messages {
            let decoded = Negotiation.Message(decoding: m.encoded)
            if case .cancel(_, let note) = m {
                guard case .cancel(_, let got) = decoded else { Issue.record("cancel lost"); continue }
                #expect(got.utf8.count <= Negotiation.maxNoteBytes && note.hasPrefix(got))
            } else {
                #expect(decoded == m)
            }
        }
        #expect(q.isValid)
        // Unsafe output paths are refused in manifests.
        for bad in ["/etc/passwd", "../x", "a/../../b", "a//b", "./a", ""] {
            #expect(!Negotiation.FileEntry.isSafeRelativePath(bad))
            let m = Negotiation.Message.finish(Negotiation.Finish(exitStatus: 0, signaled: false, timedOut: false, wallMilliseconds: 0, gpuMilliseconds: 0,
                                                                  outputs: [Harness.entry(bad, [1])]))
            #expect(Negotiation.Message(decoding: m.encoded) == nil)
        }
    }

    @Test("a chunk built in place is the same bytes as the encoded message; a short or failed fill gives none")
    func chunkInPlace() throws {
        struct ReadFailed: Error {}
        let data = (0..<(Negotiation.chunkBytes - 3)).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        let fill: (UnsafeMutableRawBufferPointer) -> Int = { buffer in
            data.withUnsafeBytes { buffer.copyMemory(from: $0) }
            return data.count
        }
        let expected = Negotiation.Message.chunk(file: 7, offset: 1 << 33, hash: Negotiation.chunkHash(data), data: data[...]).encoded
        #expect(Negotiation.Message.encodedChunk(file: 7, offset: 1 << 33, hash: nil, count: data.count, fill: fill) == expected)
        #expect(Negotiation.Message.encodedChunk(file: 7, offset: 1 << 33, hash: Negotiation.chunkHash(data), count: data.count, fill: fill) == expected)
        #expect(Negotiation.Message.encodedChunk(file: 7, offset: 0, hash: nil, count: data.count, fill: { _ in data.count - 1 }) == nil)
        #expect(throws: ReadFailed.self) {
            _ = try Negotiation.Message.encodedChunk(file: 0, offset: 0, hash: nil, count: 4, fill: { (_) throws(ReadFailed) -> Int in throw ReadFailed() })
        }
    }
}

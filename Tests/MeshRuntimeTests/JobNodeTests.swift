import Foundation
import Logging
import MeshCore
import MeshCrypto
import MeshJobs
import MeshLedger
import MeshMarket
@testable import MeshRuntime
import Testing

private let sandboxWorks: Bool = {
    guard case .success(let tools) = Sandbox.Tools.find(), case .success = Sandbox.probe(tools: tools) else { return false }
    return true
}()

/// A providing node on `loop` (sandbox executor, simulated GPUs), with `edit` applied to its config.
private func startProvider(on loop: EventLoop, bootstrap: [Contact] = [], price: String = "1", slots: Int = 1,
                           edit: (inout ProviderConfig) -> Void = { _ in }) async throws -> MeshNode {
    var o = loopbackOptions(bootstrap: bootstrap)
    o.config.provider.price = Price(parsing: price)!
    o.config.provider.slots = slots
    edit(&o.config.provider)
    let node = try await MeshNode.start(on: loop, options: o)
    _ = try await node.provide(try simulatedOffer(node, "2x rtx-4090", price: price, slots: slots))
    return node
}

private func spec(_ toml: String) throws -> JobSpec { try JobSpec(toml: toml) }

/// Recomputes `node`'s reputation scores now and returns its view of `peer`.
private func reputation(_ node: MeshNode, of peer: PublicKey) async -> Double? {
    await withCheckedContinuation { c in
        _ = node.loop.execute { node.ledger.recompute { _ = node.loop.execute { c.resume(returning: node.ledger.reputation(peer)) } } }
    }
}

/// The processes whose command line contains `text` (jobs may run as another uid).
private func processes(containing text: String) -> [String] {
    var out: [String] = []
    for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] where entry.allSatisfy(\.isNumber) {
        guard let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
        let cmd = String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
        if cmd.contains(text) { out.append(cmd) }
    }
    return out
}

@Suite("Jobs over real channels", .serialized, .timeLimit(.minutes(5)),
       .enabled(if: sandboxWorks, "bubblewrap, prlimit (and setpriv as root) with user namespaces are needed"))
struct JobNodeTests {
    @Test("a sandboxed job with inputs and outputs completes: outputs byte-identical and hashed as in the manifest, the receipt verifies with both keys and spreads by gossip")
    func endToEnd() async throws {
        try await withLoop { loop in
            let provider = try await startProvider(on: loop)
            let renter = try await MeshNode.start(on: loop, options: loopbackOptions(bootstrap: [provider.contact]))
            defer { Task { await renter.stop(); await provider.stop() } }
            let dir = try makeTempDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let small = Array("line one\n".utf8)
            var rng = SplitMix64(seed: 3)
            let big = (0..<1_500_000).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            _ = FileManager.default.createFile(atPath: dir + "/a.txt", contents: Data(small))
            _ = FileManager.default.createFile(atPath: dir + "/b.bin", contents: Data(big))
            let s = try spec("""
            name = "join"
            command = ["sh", "-c", "mkdir -p out/sub && cat a.txt b.bin > out/sub/joined && wc -c < b.bin > out/count && : > out/empty && echo hello && echo oops >&2"]
            inputs = ["a.txt", "b.bin"]
            outputs = ["out/*", "out/sub/*"]
            max_price = 2
            [resources]
            gpus = 1
            time_limit = "60s"
            """)
            let info = try await renter.runJob(JobRequest(spec: s, inputPaths: [dir + "/a.txt", dir + "/b.bin"], outputRoot: dir + "/out",
                                                          provider: provider.contact))
            #expect(info.state == "completed" && info.exitStatus == 0 && info.attempts == 1)
            let outDir = try #require(info.outputDirectory)
            #expect(outDir == dir + "/out/" + info.id)
            #expect(FileManager.default.contents(atPath: outDir + "/out/sub/joined") == Data(small + big))
            #expect(FileManager.default.contents(atPath: outDir + "/out/count") == Data("1500000\n".utf8))
            #expect(FileManager.default.contents(atPath: outDir + "/out/empty") == Data())
            #expect(info.outputs?.sorted() == ["out/count", "out/empty", "out/sub/joined"])
            #expect(!FileManager.default.fileExists(atPath: dir + "/out/." + info.id + ".partial"))

            // The receipt: both parties hold it, both signatures verify, and it names the outputs
            // on disk (recomputed here from the files).
            let held = renter.storedReceipts
            #expect(held.count == 1)
            let receipt = try #require(held.first)
            #expect(receipt.isValid && receipt.provider == provider.identity.publicKey && receipt.renter == renter.identity.publicKey)
            #expect(Hex.encode(receipt.id) == info.receipt && Hex.encode(receipt.jobID) == info.id)
            let manifest = try ["out/count", "out/empty", "out/sub/joined"].map { name in
                let (size, hash) = try JobFiles.hash(path: outDir + "/" + name)
                return Negotiation.FileEntry(name: name, size: size, hash: hash)
            }
            #expect(Negotiation.digest(manifest) == receipt.outputsDigest)
            #expect(receipt.gpus == 1 && receipt.gpuModel == "rtx-4090" && receipt.gpuMilliseconds == receipt.wallMilliseconds)
            #expect(try await eventually(10) { provider.storedReceipts == [receipt] })

            // Logs reached the renter; the provider's work directory is gone.
            let log = String(decoding: JobLog.read(renter.dataDirectory + "/jobs/\(info.id).log", from: 0, max: 1 << 16), as: UTF8.self)
            #expect(log.contains("hello") && log.contains("oops"))
            #expect(try await eventually(10) { ((try? FileManager.default.contentsOfDirectory(atPath: provider.jobs.workRoot)) ?? ["x"]).isEmpty })
            let providerJobs = try await provider.jobList()
            #expect(providerJobs.first?.state == "completed" && providerJobs.first?.role == "provider" && providerJobs.first?.receipt == info.receipt)
            // The provider published the receipt; the renter heard it and it verified.
            #expect(try await eventually(10) { try await loop.submit { renter.counters[.receiptsHeard] ?? 0 } >= 1 })
            #expect(try await loop.submit { renter.counters[.receiptsRefused] ?? 0 } == 0)
            // In the renter's ledger as its own, and its reputation view of the provider rose.
            #expect(try renter.ledger.ledger.receipts().map(\.source) == [.own])
            #expect((await reputation(renter, of: provider.identity.publicKey) ?? 0) > 0.5)
            #expect((await reputation(provider, of: renter.identity.publicKey) ?? 0) > 0.5)
        }
    }

    @Test("requests outside policy are declined with their reasons; nothing runs")
    func declines() async throws {
        try await withLoop { loop in
            let provider = try await startProvider(on: loop, price: "1.5") { $0.allowRenters = [] }
            let strict = try await startProvider(on: loop, bootstrap: [provider.contact]) {
                $0.allowRenters = [PeerID(publicKey: SigningKey().publicKey).hex]
            }
            // A provider that asks renters for a better reputation than a newcomer's 0.5.
            let picky = try await startProvider(on: loop, bootstrap: [provider.contact]) { $0.minRenterReputation = 0.6 }
            let renter = try await MeshNode.start(on: loop, options: loopbackOptions(bootstrap: [provider.contact]))
            defer { Task { await renter.stop(); await provider.stop(); await strict.stop(); await picky.stop() } }
            let dir = try makeTempDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let cases: [(String, String, MeshNode)] = [
                ("price", "command = [\"true\"]\nmax_price = 1.0", provider),
                ("executor", "command = [\"true\"]\nexecutor = \"docker\"\nimage = \"alpine\"", provider),
                ("resources", "command = [\"true\"]\n[resources]\ngpus = 4", provider),
                ("resources", "command = [\"true\"]\n[resources]\nmin_vram = \"80GiB\"\ngpus = 1", provider),
                ("limits", "command = [\"true\"]\n[resources]\ntime_limit = \"2h\"", provider),
                ("not-allowed", "command = [\"true\"]", strict),
                ("not-allowed", "command = [\"true\"]", picky),
            ]
            for (reason, body, target) in cases {
                let s = try spec("name = \"d\"\n" + body)
                do {
                    _ = try await renter.runJob(JobRequest(spec: s, inputPaths: [], outputRoot: dir, provider: target.contact))
                    Issue.record("\(reason): the job ran")
                } catch JobError.failed(let info) {
                    #expect(info.state == "failed" && info.failure?.hasPrefix(reason + ":") == true, "\(reason): \(info.failure ?? "-")")
                }
            }
            let declined = try await loop.submit { provider.counters[.jobsDeclined] ?? 0 }
            #expect(declined == 5)
            #expect(try await loop.submit { provider.counters[.jobsCompleted] ?? 0 } == 0)
            #expect(try await renter.jobList().contains { $0.failure?.contains("reputation of at least 0.60") == true })
            // Declines say nothing about the provider: no experience was recorded.
            #expect(try renter.ledger.ledger.counts().experience == 0)
        }
    }

    @Test("the renter's cancel kills the remote job and its processes; Ctrl-C semantics through cancelJob")
    func cancel() async throws {
        try await withLoop { loop in
            let provider = try await startProvider(on: loop)
            let renter = try await MeshNode.start(on: loop, options: loopbackOptions(bootstrap: [provider.contact]))
            defer { Task { await renter.stop(); await provider.stop() } }
            let dir = try makeTempDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let marker = "sleep 41.\(UInt32.random(in: 1000...9999))"
            let s = try spec("name = \"long\"\ncommand = [\"sh\", \"-c\", \"echo started; \(marker); echo never > out\"]\noutputs = [\"out\"]")
            let id = try await renter.startJob(JobRequest(spec: s, inputPaths: [], outputRoot: dir, provider: provider.contact))
            #expect(try await eventually(20) { try await renter.jobList().first { $0.id == id }?.state == "running" })
            #expect(try await eventually(10) { !processes(containing: marker).isEmpty })
            let info = try await renter.cancelJob(String(id.prefix(8)))
            #expect(info.state == "cancelled")
            #expect(try await eventually(10) { processes(containing: marker).isEmpty })
            #expect(try await eventually(10) { try await provider.jobList().first?.state == "cancelled" })
            #expect(!FileManager.default.fileExists(atPath: dir + "/" + id))
        }
    }

    @Test("a provider that goes away mid-job: a clear error without retries, success on another provider with them")
    func providerGone() async throws {
        try await withLoop { loop in
            let a = try await startProvider(on: loop)
            let b = try await startProvider(on: loop, bootstrap: [a.contact])
            let renter = try await MeshNode.start(on: loop, options: loopbackOptions(bootstrap: [a.contact, b.contact]))
            defer { Task { await renter.stop(); await a.stop(); await b.stop() } }
            let dir = try makeTempDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let s = try spec("name = \"slow\"\ncommand = [\"sh\", \"-c\", \"sleep 1.5; echo done > result\"]\noutputs = [\"result\"]\n[resources]\ngpus = 1")
            // Without retries, against a named provider that stops mid-job.
            let first = try await renter.startJob(JobRequest(spec: s, inputPaths: [], outputRoot: dir, provider: a.contact))
            #expect(try await eventually(20) { try await renter.jobList().first { $0.id == first }?.state == "running" })
            await a.stop()
            #expect(try await eventually(20) { try await renter.jobList().first { $0.id == first }?.isFinished == true })
            let failed = try #require(try await renter.jobList().first { $0.id == first })
            #expect(failed.state == "failed" && failed.failure?.isEmpty == false, "\(failed.failure ?? "-")")
            #expect(failed.failure?.contains("went away") == true || failed.failure?.contains("stopped") == true)
            // With one retry and no named provider: the search finds a (stopped, but its record
            // lives on) and b; whichever order, the job completes on b.
            let info = try await renter.runJob({ var r = JobRequest(spec: s, inputPaths: [], outputRoot: dir, retries: 1); r.timeouts.reply = 3_000; return r }())
            #expect(info.state == "completed" && info.peer == b.peerID.hex)
            #expect(FileManager.default.contents(atPath: info.outputDirectory! + "/result") == Data("done\n".utf8))
            // The renter remembers that a left mid-job; b now ranks above a in its view.
            #expect(try renter.ledger.ledger.counts().experience >= 1)
            let viewOfA = await reputation(renter, of: a.identity.publicKey) ?? 0.5
            let viewOfB = await reputation(renter, of: b.identity.publicKey) ?? 0.5
            #expect(viewOfA < 0.5 && viewOfB > 0.5, "a \(viewOfA), b \(viewOfB)")
            // find ranks and filters by that view.
            let above = try await renter.find(CapabilityQuery(model: "rtx-4090", minReputation: viewOfB - 0.01, limit: 10), measureRTT: false)
            #expect(above.offers.map(\.record.provider) == [b.identity.publicKey] && above.offers.first?.reputation == viewOfB)
            let none = try await renter.find(CapabilityQuery(model: "rtx-4090", minReputation: min(1, viewOfB + 0.01), limit: 10), measureRTT: false)
            #expect(none.offers.isEmpty)
        }
    }

    @Test("malformed and out-of-order messages close the channel on either side without a crash or half-written output")
    func hostilePeers() async throws {
        try await withLoop { loop in
            let provider = try await startProvider(on: loop)
            let renter = try await MeshNode.start(on: loop, options: loopbackOptions(bootstrap: [provider.contact]))
            // A fake provider that quotes garbage, then one that streams a finish and a bad chunk.
            let fake = try await MeshNode.start(on: loop, options: loopbackOptions(bootstrap: [provider.contact]))
            defer { Task { await renter.stop(); await provider.stop(); await fake.stop() } }
            let dir = try makeTempDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }

            // Hostile renters: garbage, then a chunk before any request, then a valid request and a bogus accept.
            let garbage: [[[UInt8]]] = [
                [[0xff, 1, 2, 3]],
                [Negotiation.Message.chunk(file: 0, offset: 0, hash: Negotiation.chunkHash([1]), data: [1]).encoded],
                [Negotiation.Message.request(jobID: Array(repeating: 9, count: 16), spec: try spec("name = \"x\"\ncommand = [\"true\"]").encode(), inputs: []).encoded,
                 Negotiation.Message.accept(jobID: Array(repeating: 9, count: 16), quoteDigest: Array(repeating: 0, count: 32), signature: Array(repeating: 0, count: 64)).encoded],
            ]
            for messages in garbage {
                let channel = try await renter.openChannel(to: provider.contact, service: ChannelService.jobs)
                let stream = try await channel.messages()
                for m in messages { try await channel.send(m) }
                var replies: [Negotiation.Message] = []
                for try await m in stream { if let d = Negotiation.Message(decoding: m) { replies.append(d) } }
                // The provider said why (a protocol-error cancel) and closed.
                guard case .cancel(.protocolError, _)? = replies.last else { Issue.record("provider replied \(replies)"); continue }
            }

            // A hostile provider: quotes correctly, then sends a finish with an output and a chunk that does not match it.
            try await loop.submit {
                fake.serve(ChannelService.jobs) { channel in
                    channel.setMessageHandler { bytes in
                        guard case .request(let id, let specBytes, let inputs)? = Negotiation.Message(decoding: bytes) else { return }
                        let q = Negotiation.Quote(jobID: id, provider: fake.identity.publicKey, renter: channel.remoteIdentity!,
                                                  specDigest: Blake2b.hash(specBytes, outputLength: 32), inputsDigest: Negotiation.digest(inputs),
                                                  price: Price(millipoints: 1), validUntil: MeshNode.wallClockMilliseconds() + 30_000).signed(by: fake.identity)
                        channel.send(Negotiation.Message.quote(q).encoded)
                        channel.send(Negotiation.Message.started(at: 1).encoded)
                        let data = Array("evil".utf8)
                        let entry = Negotiation.FileEntry(name: "result", size: 4, hash: Blake2b.hash(Array("good".utf8), outputLength: 32))
                        channel.send(Negotiation.Message.finish(Negotiation.Finish(exitStatus: 0, signaled: false, timedOut: false, wallMilliseconds: 5,
                                                                                   gpuMilliseconds: 0, outputs: [entry])).encoded)
                        channel.send(Negotiation.Message.chunk(file: 0, offset: 0, hash: Negotiation.chunkHash(data), data: data[...]).encoded)
                    }
                }
            }
            let s = try spec("name = \"victim\"\ncommand = [\"true\"]\noutputs = [\"result\"]")
            do {
                _ = try await renter.runJob(JobRequest(spec: s, inputPaths: [], outputRoot: dir, provider: fake.contact))
                Issue.record("the renter accepted a bad output")
            } catch JobError.failed(let info) {
                #expect(info.failure?.hasPrefix("protocol-error:") == true, "\(info.failure ?? "-")")
                let left = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
                #expect(left.isEmpty, "half-written output left: \(left)")
            }
            // The real provider still works after all that.
            let ok = try await renter.runJob(JobRequest(spec: try spec("name = \"ok\"\ncommand = [\"true\"]"), inputPaths: [], outputRoot: dir, provider: provider.contact))
            #expect(ok.state == "completed")
        }
    }
}

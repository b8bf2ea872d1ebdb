import MeshCore
import MeshCrypto
@testable import MeshGossip
import Testing

private let t0: UInt64 = 1_800_000_000_000

@Suite("Gossip payloads and liveness")
struct GossipPayloadTests {
    @Test("heartbeats and reports round-trip; malformed ones are refused")
    func payloads() throws {
        let beat = Gossip.Heartbeat(intervalSeconds: 60, uptimeSeconds: 3_600, freeSlots: 1, totalSlots: 2, capabilitySequence: 42)
        #expect(beat.encode().count == Gossip.Heartbeat.size)
        #expect(Gossip.Heartbeat(decoding: beat.encode()) == beat)
        let idle = Gossip.Heartbeat(intervalSeconds: 5, uptimeSeconds: 1)
        #expect(Gossip.Heartbeat(decoding: idle.encode()) == idle)
        var bad = beat.encode(); bad[0] = 2
        #expect(Gossip.Heartbeat(decoding: bad) == nil)  // version
        bad = beat.encode(); bad[1] = 3
        #expect(Gossip.Heartbeat(decoding: bad) == nil)  // unknown flag
        bad = beat.encode(); bad[2] = 0; bad[3] = 0
        #expect(Gossip.Heartbeat(decoding: bad) == nil)  // no interval
        bad = beat.encode(); bad[9] = 9
        #expect(Gossip.Heartbeat(decoding: bad) == nil)  // 9 free of 2
        #expect(Gossip.Heartbeat(decoding: beat.encode() + [0]) == nil)
        #expect(Gossip.Heartbeat(decoding: Array(beat.encode().dropLast())) == nil)

        let subject = SigningKey().publicKey
        let job = [UInt8](repeating: 0xab, count: 16)
        let report = try #require(Gossip.Report(kind: .noShow, subject: subject, jobID: job, observedAt: t0, note: "accepted, then silent"))
        #expect(Gossip.Report(decoding: report.encode()) == report)
        let plain = try #require(Gossip.Report(kind: .failedVerification, subject: subject, jobID: nil, observedAt: t0))
        #expect(Gossip.Report(decoding: plain.encode()) == plain)
        #expect(Gossip.Report(kind: .noShow, subject: subject, jobID: [1, 2], observedAt: t0) == nil)
        #expect(Gossip.Report(kind: .noShow, subject: subject, jobID: nil, observedAt: t0, note: String(repeating: "x", count: 201)) == nil)
        var r = report.encode(); r[1] = 9
        #expect(Gossip.Report(decoding: r) == nil)  // unknown kind
        #expect(Gossip.Report(decoding: report.encode() + [0]) == nil)
        #expect(Gossip.Report(decoding: Array(report.encode().prefix(40))) == nil)
    }

    @Test("liveness counts each heartbeat once, refuses replays and reordering, and computes availability from the sender's interval")
    func liveness() throws {
        let key = SigningKey()
        func heartbeat(_ seq: UInt64, free: UInt16 = 1) -> Gossip.Message {
            Gossip.Message.sign(topic: .heartbeat, payload: Gossip.Heartbeat(intervalSeconds: 10, uptimeSeconds: UInt32(seq), freeSlots: free, totalSlots: 2).encode(),
                                sequence: seq, expiresAt: t0 + 60_000, by: key)
        }
        var table = Gossip.Liveness(capacity: 3)
        #expect(try table.record(heartbeat(100), now: t0).get().count == 1)
        #expect(try table.record(heartbeat(110, free: 0), now: t0 + 10_000).get().count == 2)
        #expect(table.record(heartbeat(110), now: t0 + 10_001) == .failure(.stale))  // replay
        #expect(table.record(heartbeat(105), now: t0 + 10_002) == .failure(.stale))  // older
        let text = Gossip.Message.sign(topic: .heartbeat, payload: Array("hi".utf8), sequence: 200, expiresAt: t0 + 60_000, by: key)
        #expect(table.record(text, now: t0) == .failure(.malformed))
        let debug = Gossip.Message.sign(topic: .debug, payload: heartbeat(1).payload, sequence: 201, expiresAt: t0 + 60_000, by: key)
        #expect(table.record(debug, now: t0) == .failure(.malformed))
        let e = try #require(table.entries[key.publicKey])
        #expect(e.latest.freeSlots == 0 && e.sequence == 110 && e.firstHeard == t0 && e.lastHeard == t0 + 10_000)
        // Two of the three due by t0 + 20 s arrived; four due by 30 s.
        #expect(abs(e.availability(now: t0 + 20_000) - 2.0 / 3.0) < 1e-9)
        #expect(e.availability(now: t0 + 30_000) == 0.5)
        #expect(!e.isSilent(now: t0 + 30_000) && e.isSilent(now: t0 + 30_001))
        // Bounded: the peer heard from longest ago makes room.
        let others = (0..<3).map { _ in SigningKey() }
        for (i, k) in others.enumerated() {
            let m = Gossip.Message.sign(topic: .heartbeat, payload: Gossip.Heartbeat(intervalSeconds: 10, uptimeSeconds: 1).encode(),
                                        sequence: 1, expiresAt: t0 + 60_000, by: k)
            _ = table.record(m, now: t0 + 20_000 + UInt64(i))
        }
        #expect(table.entries.count == 3 && table.entries[key.publicKey] == nil)
    }
}

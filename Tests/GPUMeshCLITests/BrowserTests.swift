import Foundation
import MeshCore
import MeshRuntime
import Testing

/// Debian's headless Chromium, where installed (`Bootstrap/setup.sh` installs it for this suite).
let chromium: String? = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"].first { FileManager.default.isExecutableFile(atPath: $0) }

/// Loads `url` in headless Chromium, lets its timers run for `virtualMilliseconds` of virtual
/// time (0: none), and returns the DOM as the page's script left it.
func renderedDOM(_ url: String, virtualMilliseconds: Int = 0) async throws -> String {
    let dir = "/tmp/gm-chromium-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let out = dir + "/dom.html"
    _ = FileManager.default.createFile(atPath: out, contents: nil)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: chromium!)
    // --no-sandbox: Chromium refuses to run as root with its own sandbox (CI runs as root).
    // A virtual-time budget of 0 makes Chromium wait for ever: the flag is left out instead.
    p.arguments = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--user-data-dir=\(dir)/profile", "--dump-dom"]
        + (virtualMilliseconds > 0 ? ["--virtual-time-budget=\(virtualMilliseconds)"] : []) + [url]
    p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
    p.standardError = FileHandle.nullDevice
    try p.run()
    let deadline = Date().addingTimeInterval(90)
    while p.isRunning && Date() < deadline { try await Task.sleep(for: .milliseconds(100)) }
    if p.isRunning { p.terminate(); Issue.record("chromium did not finish within 90 s: \(url)") }
    return (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
}

/// The text of the element with `id` in `dom` (tags removed), nil when there is none.
func text(ofID id: String, in dom: String) -> String? {
    guard let start = dom.range(of: "id=\"\(id)\""), let open = dom[start.upperBound...].firstIndex(of: ">") else { return nil }
    let rest = dom[dom.index(after: open)...]
    guard let close = rest.range(of: "</dd>") ?? rest.range(of: "</") else { return nil }
    return String(rest[..<close.lowerBound]).replacingOccurrences(of: "<[^>]+>", with: "", options: .regularExpression)
}

@Suite("Explorer in a real browser", .serialized, .timeLimit(.minutes(3)),
       .enabled(if: chromium != nil, "headless Chromium is not installed (Bootstrap/setup.sh installs Debian's chromium for this suite)"))
struct BrowserTests {
    @Test("with a 6-peer demo mesh running, headless Chromium renders the overview and a provider's page with the numbers the JSON API gives, and the page's script refreshes the live part")
    func demoMesh() async throws {
        let demo = Process()
        demo.executableURL = URL(fileURLWithPath: gpumeshBinary)
        demo.arguments = ["demo", "--nodes", "6", "--explorer", "127.0.0.1:0"]
        let out = closeOnExecPipe()
        demo.standardOutput = out
        demo.standardError = FileHandle.nullDevice
        try demo.run()
        defer { if demo.isRunning { demo.interrupt(); demo.waitUntilExit() } }
        // The explorer's address comes first; the mesh is settled once the story is told. The
        // pipe is read on a thread of its own: a blocking read must not hold one of the few
        // threads every async test shares.
        let handle = out.fileHandleForReading
        let text = await withCheckedContinuation { (c: CheckedContinuation<String, Never>) in
            Thread.detachNewThread {
                var text = ""
                while !text.contains("the mesh stays up") {
                    let chunk = handle.availableData
                    if chunk.isEmpty { break }
                    text += String(decoding: chunk, as: UTF8.self)
                }
                c.resume(returning: text)
            }
        }
        let base = try #require(text.firstMatch(of: #/http://127\.0\.0\.1:(\d+)/#), "no explorer address in: \(text.prefix(500))")
        let port = try #require(Int(base.output.1))
        let url = String(base.output.0)

        let o = try json(try httpGet(port: port, "/api/overview").body)
        #expect(o["providers"] as? Int == 4)
        // Past one refresh interval (5 s) of virtual time: the script has fetched the live part again.
        let dom = try await renderedDOM(url + "/", virtualMilliseconds: 6_000)
        #expect(dom.contains("<h1>Overview</h1>"))
        for (id, key) in [("providers", "providers"), ("gpus", "gpus"), ("receipts-seen", "receipts_seen"), ("peers-known", "peers_known")] {
            #expect(GPUMeshCLITests.text(ofID: id, in: dom) == "\(o[key] as? Int ?? -1)", "\(id)")
        }
        #expect(GPUMeshCLITests.text(ofID: "free-slots", in: dom) == "\(o["free_slots"] as? Int ?? -1) / \(o["total_slots"] as? Int ?? -1)")
        #expect(GPUMeshCLITests.text(ofID: "vram", in: dom) == ByteSize.describe(mib: o["vram_mib"] as? Int ?? -1))
        let models = (o["models"] as? [[String: Any]] ?? []).compactMap { $0["model"] as? String }
        #expect(!models.isEmpty && models.allSatisfy { dom.contains(">\($0)</text>") }, "every model has a bar in the capacity chart")
        #expect(dom.contains("data-refreshes=\""), "the script did not fetch the live part again")

        // The cheapest provider's page.
        let capacity = try json(try httpGet(port: port, "/api/capacity").body)
        let offer = try #require((capacity["offers"] as? [[String: Any]])?.first)
        let peerID = try #require(offer["peer_id"] as? String)
        let peer = try json(try httpGet(port: port, "/api/peers/\(peerID)").body)
        let peerDOM = try await renderedDOM(url + "/peers/\(peerID)")
        #expect(peerDOM.contains("<h1>Peer \(peerID.prefix(12))</h1>"))
        let score = (peer["reputation"] as? [String: Any])?["score"] as? Double ?? -1
        #expect(GPUMeshCLITests.text(ofID: "peer-reputation", in: peerDOM)?.hasPrefix(String(format: "%.4f", score)) == true)
        #expect(GPUMeshCLITests.text(ofID: "offer-slots", in: peerDOM) == "\(offer["free_slots"] as? Int ?? -1) / \(offer["total_slots"] as? Int ?? -1)")
        #expect(GPUMeshCLITests.text(ofID: "peer-receipts", in: peerDOM) == "\((peer["receipts"] as? [Any])?.count ?? -1)")
        #expect(peerDOM.contains("id=\"chart-points\""))
        #expect((peer["uptime"] as? [String: Any]) == nil || GPUMeshCLITests.text(ofID: "uptime-state", in: peerDOM) != nil)
    }
}

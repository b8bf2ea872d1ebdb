import Foundation
import Testing
@testable import MeshExplorer

/// Debian's headless Chromium, where installed (`Bootstrap/setup.sh` installs it for this suite).
let chromium: String? = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"].first { FileManager.default.isExecutableFile(atPath: $0) }

/// Loads `url` in headless Chromium, lets its timers run for `virtualMilliseconds` of virtual
/// time, and returns the DOM as the page's script left it.
func renderedDOM(_ url: String, virtualMilliseconds: Int = 0) async throws -> String {
    let dir = "/tmp/gm-chromium-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let out = dir + "/dom.html"
    _ = FileManager.default.createFile(atPath: out, contents: nil)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: chromium!)
    // --no-sandbox: Chromium refuses to run as root with its own sandbox (CI runs as root).
    // (A budget of 0 makes Chromium wait for ever: leave the flag out instead.)
    p.arguments = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--user-data-dir=\(dir)/profile", "--dump-dom"]
        + (virtualMilliseconds > 0 ? ["--virtual-time-budget=\(virtualMilliseconds)"] : []) + [url]
    p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
    p.standardError = FileHandle.nullDevice
    try p.run()
    let deadline = Date().addingTimeInterval(90)
    while p.isRunning && Date() < deadline { try await Task.sleep(for: .milliseconds(100)) }
    if p.isRunning { p.terminate(); throw HTTPFailure(description: "chromium did not finish within 90 s") }
    return (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
}

/// The text of the element with `id` in `dom` (tags removed), nil when there is none.
func text(ofID id: String, in dom: String) -> String? {
    guard let start = dom.range(of: "id=\"\(id)\"") else { return nil }
    guard let open = dom[start.upperBound...].firstIndex(of: ">") else { return nil }
    let rest = dom[dom.index(after: open)...]
    guard let close = rest.range(of: "</dd>") ?? rest.range(of: "</") else { return nil }
    return String(rest[..<close.lowerBound]).replacingOccurrences(of: "<[^>]+>", with: "", options: .regularExpression)
}

@Suite("Explorer in a real browser", .serialized, .timeLimit(.minutes(5)),
       .enabled(if: chromium != nil, "headless Chromium is not installed (Bootstrap/setup.sh installs Debian's chromium for this suite)"))
struct BrowserTests {
    @Test("headless Chromium renders the overview and a peer page with the numbers the JSON API gives, and the script refreshes the live part")
    func overviewAndPeer() async throws {
        let f = try await Fixture.get()
        let base = "http://127.0.0.1:\(f.port)"
        let o = try #require(try await get(f.port, "/api/overview").json)
        // Past one refresh interval (5 s) of virtual time: the script has fetched the live part again.
        let dom = try await renderedDOM(base + "/", virtualMilliseconds: 6_000)
        #expect(dom.contains("<h1>Overview</h1>"))
        #expect(text(ofID: "providers", in: dom) == "\(o["providers"] as? Int ?? -1)")
        #expect(text(ofID: "gpus", in: dom) == "\(o["gpus"] as? Int ?? -1)")
        #expect(text(ofID: "free-slots", in: dom) == "\(o["free_slots"] as? Int ?? -1) / \(o["total_slots"] as? Int ?? -1)")
        #expect(text(ofID: "receipts-seen", in: dom) == "\(o["receipts_seen"] as? Int ?? -1)")
        #expect(text(ofID: "vram", in: dom) == HTML.mib(o["vram_mib"] as? Int ?? -1))
        #expect(dom.contains("id=\"chart-capacity\"") && dom.contains(">rtx-4090</text>"))
        #expect(dom.contains("data-refreshes=\""), "the script did not fetch the live part again")

        let peer = try #require(try await get(f.port, "/api/peers/\(f.p.peerID.hex)").json)
        let peerDOM = try await renderedDOM(base + "/peers/\(f.p.peerID.hex)")
        #expect(peerDOM.contains("<h1>Peer \(f.p.peerID.hex.prefix(12))</h1>"))
        #expect(text(ofID: "peer-reputation", in: peerDOM)?.hasPrefix(String(format: "%.4f", (peer["reputation"] as? [String: Any])?["score"] as? Double ?? -1)) == true)
        #expect(text(ofID: "offer-slots", in: peerDOM) == "2 / 2")
        #expect(text(ofID: "offer-gpus", in: peerDOM) == "2x rtx-4090 (24 GiB)")
        let receipts = (peer["receipts"] as? [Any])?.count ?? -1
        #expect(text(ofID: "peer-receipts", in: peerDOM) == "\(receipts)")
        #expect(peerDOM.contains("id=\"chart-points\""))
    }
}

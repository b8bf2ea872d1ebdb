import Foundation
import Testing
@testable import MeshExplorer

@Suite("Explorer pieces without a network")
struct PureTests {
    @Test("HTML.escape leaves no markup, attribute quote or entity start unescaped")
    func escape() {
        #expect(HTML.escape("<a href=\"x\" onclick='y'>&amp;</a>") == "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;amp;&lt;/a&gt;")
        #expect(HTML.escape("GPU ünïcode ✓") == "GPU ünïcode ✓")
    }

    @Test("listen addresses: loopback by default, others only with --public, nonsense refused with a reason")
    func listen() throws {
        #expect(try Explorer.parseListen("127.0.0.1:8080", allowPublic: false) == ("127.0.0.1", 8080))
        #expect(try Explorer.parseListen("[::1]:0", allowPublic: false).port == 0)
        #expect(try Explorer.parseListen("localhost:9", allowPublic: false) == ("127.0.0.1", 9))
        #expect(throws: ExplorerProblem.self) { try Explorer.parseListen("0.0.0.0:8080", allowPublic: false) }
        #expect(throws: ExplorerProblem.self) { try Explorer.parseListen("192.168.1.5:80", allowPublic: false) }
        do { _ = try Explorer.parseListen("0.0.0.0:8080", allowPublic: false) } catch { #expect(error.message.contains("--public")) }
        #expect(try Explorer.parseListen("0.0.0.0:8080", allowPublic: true) == ("0.0.0.0", 8080))
        for bad in ["8080", "example.com:80", "127.0.0.1:99999", "127.0.0.1:", ""] {
            #expect(throws: ExplorerProblem.self, "\(bad)") { try Explorer.parseListen(bad, allowPublic: true) }
        }
        #expect(Guard.isLoopbackAuthority("127.0.0.1:80") && Guard.isLoopbackAuthority("[::1]:8080") && Guard.isLoopbackAuthority("localhost"))
        #expect(!Guard.isLoopbackAuthority("127.0.0.1.evil.example") && !Guard.isLoopbackAuthority("[::2]:80") && !Guard.isLoopbackAuthority("10.0.0.1:80"))
    }

    @Test("JSON keys: snake_case with ID, MiB and GPUs read as words")
    func keys() {
        #expect(SnakeKey("peerID").stringValue == "peer_id")
        #expect(SnakeKey("vramMiB").stringValue == "vram_mib")
        #expect(SnakeKey("totalGPUs").stringValue == "total_gpus")
        #expect(SnakeKey("lastSeenMsAgo").stringValue == "last_seen_ms_ago")
        #expect(SnakeKey("jobs").stringValue == "jobs")
    }

    @Test("a log read that ends inside a UTF-8 character leaves that character for the next read")
    func utf8Tail() {
        let text = Array("ab€".utf8)  // € is 3 bytes
        #expect(ViewSource.incompleteUTF8Tail(text) == 0)
        #expect(ViewSource.incompleteUTF8Tail(Array(text.prefix(4))) == 2)
        #expect(ViewSource.incompleteUTF8Tail(Array(text.prefix(3))) == 1)
        #expect(ViewSource.incompleteUTF8Tail(Array("😀".utf8).dropLast().map { $0 }) == 3)
        #expect(ViewSource.incompleteUTF8Tail([]) == 0)
    }

    @Test("charts: bar heights follow the values, the axis top is a readable number, labels are escaped")
    func charts() throws {
        #expect(Chart.niceCeiling(3) == 4 && Chart.niceCeiling(4) == 4 && Chart.niceCeiling(5) == 8 && Chart.niceCeiling(0) == 1)
        #expect(Chart.niceCeiling(0.006) == 0.008 && Chart.niceCeiling(1000) == 1000)
        let svg = Chart.columns(id: "c", title: "t", bars: [.init(label: "<x>", value: 1, tooltip: "a"), .init(label: "y", value: 4, tooltip: "b")])
        #expect(svg.hasPrefix("<svg") && svg.hasSuffix("</svg>") && svg.contains("&lt;x&gt;") && !svg.contains("<x>"))
        let heights = try Regex(#"height="([0-9.]+)" data-value"#)
        let h = svg.matches(of: heights).compactMap { Double($0.output[1].substring ?? "") }
        #expect(h.count == 2 && abs(h[1] / h[0] - 4) < 0.01)
        #expect(Chart.rows(id: "r", title: "t", bars: [], unit: "GPUs").contains("no offers heard yet"))
    }
}

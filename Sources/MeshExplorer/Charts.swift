import Foundation

/// Bar charts drawn on the server as inline SVG: no script and no asset from anywhere.
enum Chart {
    /// One bar: its label (under or beside it), its value, and the tooltip text.
    struct Bar: Equatable {
        var label: String
        var value: Double
        var tooltip: String
    }

    /// Vertical columns (time series: jobs per hour, points per epoch). Every `labelEvery`th
    /// label is drawn. `id` names the chart for tests and styling.
    static func columns(id: String, title: String, bars: [Bar], labelEvery: Int = 1, width: Int = 720, height: Int = 200) -> String {
        let top = 24.0, bottom = 28.0, left = 44.0, right = 8.0
        let plotW = Double(width) - left - right, plotH = Double(height) - top - bottom
        let maxValue = niceCeiling(bars.map(\.value).max() ?? 0)
        var svg = header(id: id, title: title, width: width, height: height)
        svg += axis(maxValue: maxValue, left: left, top: top, plotW: plotW, plotH: plotH)
        let slot = bars.isEmpty ? plotW : plotW / Double(bars.count)
        let barW = min(slot * 0.7, 48)
        for (i, bar) in bars.enumerated() {
            let h = maxValue > 0 ? plotH * bar.value / maxValue : 0
            let x = left + Double(i) * slot + (slot - barW) / 2
            svg += "<rect class=\"bar\" x=\"\(f(x))\" y=\"\(f(top + plotH - h))\" width=\"\(f(barW))\" height=\"\(f(h))\" data-value=\"\(num(bar.value))\">"
                + "<title>\(HTML.escape(bar.tooltip))</title></rect>"
            if i % max(1, labelEvery) == 0 {
                svg += "<text class=\"tick\" x=\"\(f(x + barW / 2))\" y=\"\(f(top + plotH + 16))\" text-anchor=\"middle\">\(HTML.escape(bar.label))</text>"
            }
        }
        if bars.allSatisfy({ $0.value == 0 }) {
            svg += "<text class=\"empty\" x=\"\(f(left + plotW / 2))\" y=\"\(f(top + plotH / 2))\" text-anchor=\"middle\">nothing yet</text>"
        }
        return svg + "</svg>"
    }

    /// Horizontal bars, one row per label (capacity by model), each with its value written after it.
    static func rows(id: String, title: String, bars: [Bar], unit: String, width: Int = 720) -> String {
        let rowH = 26.0, top = 24.0, left = 150.0, right = 90.0
        let height = Int(top + rowH * Double(max(1, bars.count)) + 8)
        let plotW = Double(width) - left - right
        let maxValue = bars.map(\.value).max() ?? 0
        var svg = header(id: id, title: title, width: width, height: height)
        for (i, bar) in bars.enumerated() {
            let y = top + Double(i) * rowH
            let w = maxValue > 0 ? plotW * bar.value / maxValue : 0
            svg += "<text class=\"tick\" x=\"\(f(left - 8))\" y=\"\(f(y + rowH * 0.62))\" text-anchor=\"end\">\(HTML.escape(bar.label))</text>"
            svg += "<rect class=\"bar\" x=\"\(f(left))\" y=\"\(f(y + 4))\" width=\"\(f(w))\" height=\"\(f(rowH - 8))\" data-value=\"\(num(bar.value))\">"
                + "<title>\(HTML.escape(bar.tooltip))</title></rect>"
            svg += "<text class=\"value\" x=\"\(f(left + w + 6))\" y=\"\(f(y + rowH * 0.62))\">\(num(bar.value)) \(HTML.escape(unit))</text>"
        }
        if bars.isEmpty {
            svg += "<text class=\"empty\" x=\"\(f(left + plotW / 2))\" y=\"\(f(top + rowH * 0.6))\" text-anchor=\"middle\">no offers heard yet</text>"
        }
        return svg + "</svg>"
    }

    private static func header(id: String, title: String, width: Int, height: Int) -> String {
        "<svg class=\"chart\" id=\"\(HTML.escape(id))\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 \(width) \(height)\" width=\"\(width)\" height=\"\(height)\" role=\"img\" aria-label=\"\(HTML.escape(title))\">"
            + "<title>\(HTML.escape(title))</title>"
            + "<text class=\"chart-title\" x=\"4\" y=\"15\">\(HTML.escape(title))</text>"
    }

    private static func axis(maxValue: Double, left: Double, top: Double, plotW: Double, plotH: Double) -> String {
        var out = ""
        for step in 0...4 {
            let v = maxValue * Double(step) / 4
            let y = top + plotH - plotH * Double(step) / 4
            out += "<line class=\"grid\" x1=\"\(f(left))\" x2=\"\(f(left + plotW))\" y1=\"\(f(y))\" y2=\"\(f(y))\"/>"
            out += "<text class=\"tick\" x=\"\(f(left - 6))\" y=\"\(f(y + 4))\" text-anchor=\"end\">\(num(v))</text>"
        }
        return out
    }

    /// The smallest of 1, 2, 4, 8 times a power of ten at or above `v`: an axis top whose
    /// quarters read well (a count of 3 gets ticks 0, 1, 2, 3, 4).
    static func niceCeiling(_ v: Double) -> Double {
        guard v > 0, v.isFinite else { return 1 }
        let magnitude = pow(10, floor(log10(v)))
        for m in [1.0, 2, 4, 8, 10] where m * magnitude >= v * (1 - 1e-12) { return m * magnitude }
        return 10 * magnitude
    }

    /// A coordinate with one decimal.
    static func f(_ v: Double) -> String { String(format: "%.1f", v) }

    /// A value for people: whole numbers without decimals, others with up to four.
    static func num(_ v: Double) -> String {
        if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
        var s = String(format: "%.4f", v)
        while s.hasSuffix("0") { s.removeLast() }
        return s
    }
}

import Core
import Foundation
import Migrate

// The benchmark matrix (which cases `bench --matrix` and `bench --quick` run) and the SVG
// chart `bench --svg` writes. The engine produces the statistics; this file only chooses
// cases and draws them.

enum BenchMatrix {
    enum Workload: String, CaseIterable { case idle, dirty }

    /// One cell of the matrix: workload × transport × zstd × delta × dirty source.
    static func cell(_ workload: Workload, tls: Bool, zstd: Bool, delta: Bool, source: DirtySourceMode) -> BenchCase {
        let name = [workload.rawValue, tls ? "tls" : "plain", zstd ? "zstd" : "nozstd", delta ? "delta" : "nodelta",
                    source.rawValue].joined(separator: "-")
        let cmdline = switch workload {
        case .idle: "workload=idle"
        // 256 MiB/s of random, partly compressible page writes over a 256 MiB working set
        // (--quick: 64 MiB): faster than one round drains, slower than the dirty-max cases.
        case .dirty: "workload=dirty mib=256 passes=0 pattern=random content=mixed rate=65536 progress=0"
        }
        var c = BenchCase(name: name, memory: 1 << 30, cmdline: cmdline)
        c.tls = tls
        c.compression = zstd ? 1 : nil
        c.delta = delta
        c.dirtySource = source
        c.maxTime = 60
        return c
    }

    /// Every combination: 2 × 2 × 2 × 2 × 3 = 48 cases.
    static let all: [BenchCase] = Workload.allCases.flatMap { w in
        [true, false].flatMap { tls in
            [true, false].flatMap { zstd in
                [true, false].flatMap { delta in
                    DirtySourceMode.allCases.map { cell(w, tls: tls, zstd: zstd, delta: delta, source: $0) }
                }
            }
        }
    }

    /// For CI: the default configuration (dirty, TLS, zstd, delta, hybrid) and one factor
    /// changed at a time, plus the idle guest at both ends of the feature range.
    static let pruned: [BenchCase] = [
        cell(.dirty, tls: true, zstd: true, delta: true, source: .hybrid),
        cell(.dirty, tls: false, zstd: true, delta: true, source: .hybrid),
        cell(.dirty, tls: true, zstd: false, delta: true, source: .hybrid),
        cell(.dirty, tls: true, zstd: true, delta: false, source: .hybrid),
        cell(.dirty, tls: true, zstd: false, delta: false, source: .hybrid),
        cell(.dirty, tls: true, zstd: true, delta: true, source: .kvm),
        cell(.dirty, tls: true, zstd: true, delta: true, source: .pv),
        cell(.idle, tls: true, zstd: true, delta: true, source: .hybrid),
        cell(.idle, tls: false, zstd: false, delta: false, source: .kvm),
    ]
}

/// `bench --svg`: one overview (total time and downtime per case) and, per case, the bytes
/// each round sent and the pages left dirty after it, over the migration's time line.
enum BenchChart {
    static func svg(_ results: [BenchResult], title: String) -> String {
        // One representative run per case: the median by total time.
        let names = results.map(\.name).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
        let cases: [(String, MigrationStats?, BenchResult?)] = names.map { name in
            let ok = results.filter { $0.name == name && $0.stats != nil }.sorted { $0.stats!.totalSeconds < $1.stats!.totalSeconds }
            let pick = ok.isEmpty ? nil : ok[ok.count / 2]
            return (name, pick?.stats, pick)
        }
        let width = 1080.0
        let columns = 3
        let panelW = (width - 40) / Double(columns), panelH = 210.0
        let rowH = 22.0
        let overviewH = 84 + Double(cases.count) * rowH
        let rows = (cases.count + columns - 1) / columns
        let height = overviewH + 50 + Double(rows) * (panelH + 20) + 20
        var svg = SVG(width: width, height: height)
        svg.text(20, 30, title, size: 18, weight: "bold")
        svg.text(20, 50, "Total migration time, guest downtime (paused at the source → running at the destination), bytes on the wire, and how fast",
                 size: 12, color: "#444")
        svg.text(20, 65, "the guest dirtied memory during the migration relative to before it. Median run per case.", size: 12, color: "#444")
        overview(&svg, cases, top: 76, rowH: rowH, width: width)
        let gridTop = overviewH + 30
        let panelsTop = gridTop + 15
        svg.text(20, gridTop - 8, "Per case: MiB sent in each round (blue bars, left axis; bar width = the round's duration) and pages still dirty after it",
                 size: 12, color: "#444")
        svg.text(20, gridTop + 7, "(orange, right axis). Red: the stop-and-copy round, while the guest is paused. Each panel has its own scales.",
                 size: 12, color: "#444")
        for (i, c) in cases.enumerated() {
            let x = 20 + Double(i % columns) * panelW, y = panelsTop + Double(i / columns) * (panelH + 20)
            panel(&svg, name: c.0, stats: c.1, failure: c.2?.failure ?? results.first { $0.name == c.0 }?.failure,
                  x: x, y: y, w: panelW - 16, h: panelH)
        }
        return svg.finish()
    }

    private static func overview(_ svg: inout SVG, _ cases: [(String, MigrationStats?, BenchResult?)], top: Double, rowH: Double,
                                 width: Double) {
        let labelW = 250.0, barX = 20 + labelW, barW = width - barX - 420
        let downX = barX + barW + 16, downW = 90.0
        svg.text(barX, top - 2, "total time", size: 10, color: "#2b5d9b")
        svg.text(downX, top - 2, "downtime", size: 10, color: "#c9302c")
        svg.text(downX + downW + 8, top - 2, "total · downtime · on the wire · guest speed", size: 10, color: "#444")
        let maxTotal = max(0.001, cases.compactMap { $0.1?.totalSeconds }.max() ?? 1)
        let maxDown = max(0.001, cases.compactMap { $0.1?.downtimeSeconds }.max() ?? 1)
        let scale = niceCeiling(maxTotal)
        for (tick, value) in ticks(scale) {
            let x = barX + barW * tick
            svg.line(x, top, x, top + Double(cases.count) * rowH, color: "#ddd")
            svg.text(x, top + Double(cases.count) * rowH + 12, format(value) + " s", size: 10, anchor: "middle", color: "#666")
        }
        for (i, c) in cases.enumerated() {
            let y = top + Double(i) * rowH
            svg.text(20, y + 15, c.0, size: 12, family: "monospace")
            guard let s = c.1 else {
                svg.text(barX + 4, y + 15, "failed", size: 12, color: "#c00")
                continue
            }
            svg.rect(barX, y + 3, max(1, barW * s.totalSeconds / scale), rowH - 8, fill: "#4a7ebb")
            // Downtime on its own scale (longest = full width).
            svg.rect(downX, y + 6, max(1, downW * s.downtimeSeconds / maxDown), rowH - 12, fill: "#d9534f")
            let speed = c.2.map { $0.guestBaseline > 0 ? String(format: "%.0f%%", 100 * $0.guestDuring / $0.guestBaseline) : "idle" } ?? ""
            svg.text(downX + downW + 8, y + 15, String(format: "%.2f s · %.1f ms · %.1f MiB · %@", s.totalSeconds,
                                                      s.downtimeSeconds * 1000, Double(s.wireBytes) / 1_048_576, speed),
                     size: 11, family: "monospace")
        }
    }

    private static func panel(_ svg: inout SVG, name: String, stats: MigrationStats?, failure: String?,
                              x: Double, y: Double, w: Double, h: Double) {
        svg.rect(x, y, w, h, fill: "#fafafa", stroke: "#ccc")
        svg.text(x + 8, y + 16, name, size: 12, weight: "bold", family: "monospace")
        guard let s = stats, !s.rounds.isEmpty else {
            svg.text(x + 8, y + 40, "failed: \(failure ?? "no statistics")".prefix(60).description, size: 11, color: "#c00")
            return
        }
        svg.text(x + 8, y + 31, String(format: "total %.2f s · downtime %.1f ms · %.1f MiB · %d rounds", s.totalSeconds,
                                       s.downtimeSeconds * 1000, Double(s.wireBytes) / 1_048_576, s.rounds.count),
                 size: 10, color: "#444")
        let plotX = x + 44, plotY = y + 54, plotW = w - 92, plotH = h - 84
        let duration = max(0.001, s.rounds.reduce(0) { $0 + $1.seconds })
        let maxMiB = niceCeiling(max(0.001, s.rounds.map { Double($0.wireBytes) / 1_048_576 }.max() ?? 1))
        let maxDirty = niceCeiling(max(5, Double(s.rounds.map(\.dirtyPages).max() ?? 1)))
        let tScale = niceCeiling(duration)
        for (tick, value) in ticks(maxMiB) {
            let ty = plotY + plotH * (1 - tick)
            svg.line(plotX, ty, plotX + plotW, ty, color: "#e4e4e4")
            svg.text(plotX - 4, ty + 3, format(value), size: 9, anchor: "end", color: "#2b5d9b")
        }
        for (tick, value) in ticks(maxDirty) {
            svg.text(plotX + plotW + 4, plotY + plotH * (1 - tick) + 3, compact(value), size: 9, color: "#c76a00")
        }
        for (tick, value) in ticks(tScale) {
            svg.text(plotX + plotW * tick, plotY + plotH + 12, format(value), size: 9, anchor: "middle", color: "#666")
        }
        svg.text(plotX + plotW / 2, plotY + plotH + 25, "seconds since the first round", size: 9, anchor: "middle", color: "#666")
        svg.text(plotX - 36, plotY - 8, "MiB", size: 9, color: "#2b5d9b")
        svg.text(x + w - 4, plotY - 8, "dirty pages", size: 9, anchor: "end", color: "#c76a00")
        svg.line(plotX, plotY + plotH, plotX + plotW, plotY + plotH, color: "#888")
        var t = 0.0
        var points: [(Double, Double)] = []
        for (i, r) in s.rounds.enumerated() {
            let last = i == s.rounds.count - 1
            let bx = plotX + plotW * t / tScale
            let bw = max(2, plotW * r.seconds / tScale - 1)
            let bh = plotH * (Double(r.wireBytes) / 1_048_576) / maxMiB
            svg.rect(bx, plotY + plotH - bh, bw, max(bh, 0.5), fill: last ? "#d9534f" : "#4a7ebb", opacity: 0.85)
            t += r.seconds
            if !last { points.append((plotX + plotW * t / tScale, plotY + plotH * (1 - Double(r.dirtyPages) / maxDirty))) }
        }
        if !points.isEmpty {
            svg.polyline(points, color: "#f0900a")
            for (px, py) in points { svg.circle(px, py, 2.5, fill: "#f0900a") }
        }
    }

    /// The smallest 1/2/5 × 10^n at or above `value`.
    static func niceCeiling(_ value: Double) -> Double {
        let exponent = floor(log10(value))
        let base = pow(10, exponent)
        for m in [1.0, 2.0, 5.0, 10.0] where m * base >= value * 0.999_999 { return m * base }
        return 10 * base
    }

    /// (fraction of the axis, value) for evenly spaced round ticks from 0 to `top` (a nice
    /// ceiling): steps of 0.2 × 10^n for 1, 0.5 × 10^n for 2 and 1 × 10^n for 5.
    static func ticks(_ top: Double) -> [(Double, Double)] {
        let leading = top / pow(10, floor(log10(top)))
        let count = abs(leading - 2) < 0.01 ? 4 : 5
        return (0...count).map { (Double($0) / Double(count), top * Double($0) / Double(count)) }
    }

    static func format(_ v: Double) -> String {
        if v == 0 { return "0" }
        let text = v >= 10 ? String(format: "%.0f", v) : v >= 1 ? String(format: "%.1f", v)
            : v >= 0.1 ? String(format: "%.2f", v) : v >= 0.01 ? String(format: "%.3f", v) : String(format: "%.4f", v)
        guard text.contains(".") else { return text }
        var t = Substring(text)
        while t.hasSuffix("0") { t = t.dropLast() }
        if t.hasSuffix(".") { t = t.dropLast() }
        return String(t)
    }

    static func compact(_ v: Double) -> String {
        v >= 1_000_000 ? format(v / 1_000_000) + "M" : v >= 1000 ? format(v / 1000) + "k" : String(format: "%.0f", v)
    }
}

/// A minimal SVG writer: the elements the chart needs, text escaped.
struct SVG {
    private var body: [String] = []
    let width: Double, height: Double

    init(width: Double, height: Double) { self.width = width; self.height = height }

    private static func n(_ v: Double) -> String { String(format: "%.1f", v) }

    private static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    mutating func rect(_ x: Double, _ y: Double, _ w: Double, _ h: Double, fill: String, stroke: String? = nil, opacity: Double = 1) {
        body.append("<rect x=\"\(Self.n(x))\" y=\"\(Self.n(y))\" width=\"\(Self.n(w))\" height=\"\(Self.n(h))\" fill=\"\(fill)\""
            + (stroke.map { " stroke=\"\($0)\"" } ?? "") + (opacity < 1 ? " fill-opacity=\"\(opacity)\"" : "") + "/>")
    }

    mutating func line(_ x1: Double, _ y1: Double, _ x2: Double, _ y2: Double, color: String) {
        body.append("<line x1=\"\(Self.n(x1))\" y1=\"\(Self.n(y1))\" x2=\"\(Self.n(x2))\" y2=\"\(Self.n(y2))\" stroke=\"\(color)\" stroke-width=\"1\"/>")
    }

    mutating func circle(_ x: Double, _ y: Double, _ r: Double, fill: String) {
        body.append("<circle cx=\"\(Self.n(x))\" cy=\"\(Self.n(y))\" r=\"\(Self.n(r))\" fill=\"\(fill)\"/>")
    }

    mutating func polyline(_ points: [(Double, Double)], color: String) {
        let p = points.map { "\(Self.n($0.0)),\(Self.n($0.1))" }.joined(separator: " ")
        body.append("<polyline points=\"\(p)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.5\"/>")
    }

    mutating func text(_ x: Double, _ y: Double, _ s: String, size: Double, anchor: String = "start", weight: String = "normal",
                       family: String = "sans-serif", color: String = "#222") {
        body.append("<text x=\"\(Self.n(x))\" y=\"\(Self.n(y))\" font-size=\"\(Self.n(size))\" font-family=\"\(family)\" "
            + "font-weight=\"\(weight)\" text-anchor=\"\(anchor)\" fill=\"\(color)\">\(Self.escape(s))</text>")
    }

    func finish() -> String {
        """
        <?xml version="1.0" encoding="UTF-8"?>
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Self.n(width))" height="\(Self.n(height))" viewBox="0 0 \(Self.n(width)) \(Self.n(height))">
        <rect width="100%" height="100%" fill="white"/>
        \(body.joined(separator: "\n"))
        </svg>

        """
    }
}

extension BenchResult {
    /// The pause phase by phase (`PausePhases`), medians per case; empty when no run has them.
    static func pauseTable(_ results: [BenchResult]) -> String {
        medianTable(results, title: "pause at the source, ms (medians)", \.pausePhases, [
            ("stop vCPUs", \.stopVCPUs), ("harvest", \.harvest), ("of it KVM log", \.harvestKVM),
            ("final round", \.finalRound), ("BALLOON", \.balloonUpdate), ("finish", \.finish), ("state save", \.stateSave),
            ("STATE sent", \.stateSend), ("COMMIT→PREPARED", \.commitToPrepared), ("hand-over", \.handOver),
            ("GO→DONE", \.goToDone), ("total", \.total),
        ])
    }

    /// The destination's share of the pause (`DestinationPhases`), medians per case.
    static func destinationTable(_ results: [BenchResult]) -> String {
        medianTable(results, title: "pause at the destination, ms (medians)", \.receiver?.phases, [
            ("streams tail", \.streamsTail), ("await COMMIT", \.awaitCommit), ("state check", \.stateCheck),
            ("memory digest", \.memoryDigest), ("restore", \.restore), ("PREPARED sent", \.prepared),
            ("await GO", \.awaitGo), ("record", \.record), ("start", \.start), ("DONE sent", \.done),
            ("own work", \.work),
        ])
    }

    /// One row per case: the median of each column over the runs that have `phases`.
    private static func medianTable<P>(_ results: [BenchResult], title: String, _ phases: KeyPath<BenchResult, P?>,
                                       _ columns: [(String, KeyPath<P, Double>)]) -> String {
        let names = results.map(\.name).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
        var lines: [String] = []
        for name in names {
            let runs = results.filter { $0.name == name }.compactMap { $0[keyPath: phases] }
            guard !runs.isEmpty else { continue }
            let cells = columns.map { _, path -> String in
                let v = runs.map { $0[keyPath: path] * 1000 }.sorted()
                let m = v.count % 2 == 1 ? v[v.count / 2] : (v[v.count / 2 - 1] + v[v.count / 2]) / 2
                return String(format: "%.1f", m)
            }
            lines.append("| \(name) | \(runs.count) | " + cells.joined(separator: " | ") + " |")
        }
        guard !lines.isEmpty else { return "" }
        return (["| \(title) | runs | " + columns.map(\.0).joined(separator: " | ") + " |",
                 "|---|---|" + String(repeating: "---|", count: columns.count)] + lines).joined(separator: "\n")
    }
}

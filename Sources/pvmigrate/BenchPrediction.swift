import Foundation
import Migrate

extension BenchResult {
    /// Predicted vs actual pause, phase by phase (issue 11: within ±30 %): per case the medians
    /// of the predicted and the measured phases, and every run's actual ÷ predicted pause.
    /// Empty when no run has a predicted pause by phase (files written before it existed).
    static func predictionTable(_ results: [BenchResult]) -> String {
        let names = results.map(\.name).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
        let columns: [(String, (PausePhases) -> Double)] = [
            ("stop vCPUs", \.stopVCPUs), ("harvest", \.harvest), ("final round", \.finalRound),
            ("balloon map + state save + sent", { $0.balloonUpdate + $0.stateSave + $0.stateSend + $0.finish }),
            ("commit (2 round trips)", { $0.commitToPrepared + $0.handOver + $0.goToDone }), ("total", \.total),
        ]
        var lines: [String] = []
        for name in names {
            let runs = results.filter { $0.name == name }.compactMap { r -> (PausePhases, PausePhases)? in
                guard let predicted = r.stats?.predictedPausePhases, let actual = r.stats?.pausePhases else { return nil }
                return (predicted, actual)
            }
            guard !runs.isEmpty else { continue }
            func median(_ v: [Double]) -> Double {
                let s = v.sorted()
                return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
            }
            let cells = columns.map { _, f in
                String(format: "%.1f / %.1f", median(runs.map { f($0.0) * 1000 }), median(runs.map { f($0.1) * 1000 }))
            }
            let ratios = runs.map { String(format: "%.2f", $0.1.total / max($0.0.total, 1e-9)) }.joined(separator: ", ")
            lines.append("| \(name) | \(runs.count) | " + cells.joined(separator: " | ") + " | \(ratios) |")
        }
        guard !lines.isEmpty else { return "" }
        return (["| predicted / actual, ms (medians) | runs | " + columns.map(\.0).joined(separator: " | ")
                    + " | actual ÷ predicted (each run) |",
                 "|---|---|" + String(repeating: "---|", count: columns.count + 1)] + lines).joined(separator: "\n")
    }
}

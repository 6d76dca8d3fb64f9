// The request target of the metrics listener's HTTP requests ("/ratelimit/status?rule=r&key=k"):
// the path and its percent-decoded query parameters. The text is the scraper's (any local
// user, or the allow list's hosts), so nothing in it may trap; NIO's HTTP decoder has
// already bounded its length. It knows nothing of NIO, so the fuzzers compile it alone.

import Foundation

enum HTTPTarget {
    /// "/path?a=1&b=%2B" → ("/path", ["a": "1", "b": "+"]); a name without "=" has the value
    /// "", an undecodable escape is kept as written, and a later duplicate wins.
    static func parse(_ uri: String) -> (path: String, query: [String: String]) {
        let parts = uri.split(separator: "?", maxSplits: 1)
        var query: [String: String] = [:]
        if parts.count == 2 {
            for pair in parts[1].split(separator: "&") {
                // Empty pieces kept: "=" alone is an empty name, not an empty list (which trapped).
                let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let name = String(kv[0]).removingPercentEncoding ?? String(kv[0])
                query[name] = kv.count == 2 ? (String(kv[1]).removingPercentEncoding ?? String(kv[1])) : ""
            }
        }
        return (parts.first.map(String.init) ?? "/", query)
    }
}

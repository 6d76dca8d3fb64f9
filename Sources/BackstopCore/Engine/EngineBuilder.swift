// Builds a PolicyEngine from a Configuration, reusing the running checks' state where a
// check supports it. Any failure (a table with errors, say) throws, and the caller keeps
// the engine it already has.

import Logging

public enum EngineBuilder {
    /// `validating`: built only to be checked (`backstop check-config`), see CheckBuildContext.
    public static func build(_ config: Configuration, previous: PolicyEngine?, logger: Logger, validating: Bool = false) throws -> PolicyEngine {
        var built: [String: any Check] = [:]
        var issues: [ConfigIssue] = []
        let delimiters = config.recipientDelimiters
        let logLevel = Logger.Level(rawValue: config.log.level)
        for name in config.checks.keys.sorted() {
            guard let settings = config.checks[name] else { continue }
            var context = CheckBuildContext(logger: logger, previous: previous?.checks[name], deadline: config.policy.deadline,
                                            recipientDelimiters: delimiters, logLevel: logLevel)
            context.validating = validating
            do {
                built[name] = try settings.makeCheck(context)
            } catch let error as ConfigError {
                issues.append(contentsOf: error.issues)
            } catch {
                issues.append(ConfigIssue(file: config.file, line: nil, key: name, message: "\(error)"))
            }
        }
        if !issues.isEmpty { throw ConfigError(issues: issues) }
        var stages: [ProtocolState: [any Check]] = [:]
        for (state, names) in config.policy.stages {
            stages[state] = names.compactMap { built[$0] }
        }
        // The decision line is logged at info: with a higher level, or none asked for, no
        // decision needs its trail.
        let logsDecisions = (logLevel ?? .info) <= .info && config.log.decisions != .none
        return PolicyEngine(stages: stages, testMode: config.policy.testMode, deadline: config.policy.deadline,
                            allChecks: built, timeChecks: config.metrics.listen != nil, keepsTrail: logsDecisions)
    }
}

// The generic cell rate algorithm (GCRA): a token bucket kept as one number per key, the
// "theoretical arrival time" (TAT). A bucket holds `burst` units and refills one unit every
// emission interval T = period / count. The TAT is the instant at which the bucket would be
// full again; a key whose TAT is in the past carries no state and may be forgotten.
// Pure arithmetic on nanoseconds: no clock, no storage, no locking (the stores do that).

/// The fixed numbers of one rule: how fast the bucket refills and how much it holds.
public struct GCRAParameters: Sendable, Hashable {
    /// Nanoseconds per unit of allowance (T = period / count, rounded down to whole nanoseconds).
    public let emissionInterval: Int64
    /// How many units the bucket holds (the most that may be used at once).
    public let burst: Int64
    /// burst × T: how far the TAT may run ahead of now.
    public let tolerance: Int64

    /// Fails (returns nil) when the numbers cannot be represented: T below 1 ns, or a
    /// bucket that would reach more than ~146 years ahead.
    public init?(count: Int64, period: Int64, burst: Int64) {
        guard count > 0, period > 0, burst > 0, period / count >= 1 else { return nil }
        let t = period / count
        let (tolerance, overflow) = t.multipliedReportingOverflow(by: burst)
        guard !overflow, tolerance <= Int64(1) << 62 else { return nil }
        self.emissionInterval = t
        self.burst = burst
        self.tolerance = tolerance
    }
}

/// What happened to one hit.
public enum GCRAOutcome: Sendable, Equatable {
    /// The hit was counted; `remaining` units are left right now, `newTAT` is the key's new state.
    case admitted(remaining: Int64, newTAT: Int64)
    /// The hit was not counted (nothing consumed); it would fit `retryAfter` ns from now.
    /// `retryAfter` is nil when the hit is larger than the whole bucket and never fits.
    case refused(retryAfter: Int64?)
}

public enum GCRA {
    /// Applies a hit of `cost` units at `now` to a key whose state is `tat` (nil: unknown key).
    /// A state further ahead than the tolerance (kept from a larger limit or burst, or from an
    /// override since removed) counts as the whole bucket used, no more: the key frees up at
    /// the rate in force (`clamped` says what to store when the hit is refused).
    @inlinable
    public static func apply(tat: Int64?, now: Int64, cost: Int64, _ p: GCRAParameters) -> GCRAOutcome {
        guard cost <= p.burst else { return .refused(retryAfter: nil) }
        let base = min(max(tat ?? now, now), now &+ p.tolerance)
        let increment = cost &* p.emissionInterval  // cost ≤ burst, so this fits (checked in init)
        let newTAT = base &+ increment
        let ahead = newTAT &- now
        if ahead > p.tolerance {
            return .refused(retryAfter: ahead &- p.tolerance)
        }
        return .admitted(remaining: (p.tolerance &- ahead) / p.emissionInterval, newTAT: newTAT)
    }

    /// The state to keep for a key in state `tat` whose hit was refused: `tat` brought back
    /// to a full bucket's worth ahead of `now` when it was further, else nil (nothing to write).
    @inlinable
    public static func clamped(tat: Int64?, now: Int64, _ p: GCRAParameters) -> Int64? {
        guard let tat, tat &- now > p.tolerance else { return nil }
        return now &+ p.tolerance
    }

    /// Units available now for a key in state `tat` (nil or past: a full bucket).
    @inlinable
    public static func available(tat: Int64?, now: Int64, _ p: GCRAParameters) -> Int64 {
        let ahead = max(tat ?? now, now) &- now
        return max(0, (p.tolerance &- ahead) / p.emissionInterval)
    }

    /// The state after giving back `cost` units of an earlier admitted hit (a later rule of
    /// the same request refused it). Returns nil when the bucket is then full (forget the key).
    @inlinable
    public static func refund(tat: Int64, now: Int64, cost: Int64, _ p: GCRAParameters) -> Int64? {
        let back = tat &- cost &* p.emissionInterval
        return back > now ? back : nil
    }
}

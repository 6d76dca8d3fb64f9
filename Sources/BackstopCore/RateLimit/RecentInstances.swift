// A bounded memory of the messages (Postfix `instance` values) a message-counting rule has
// already counted, so a message is one hit per key however many times the policy is asked
// about it (several recipients at RCPT, a check listed at two stages, a retried request).
// Holds the last 65,536 (rule, instance, key) hashes in 16 locked rings; older ones are
// forgotten, so a message still open after that many newer ones would count again.

import NIOConcurrencyHelpers

public final class RecentInstances: Sendable {
    private struct Ring {
        var slots: [UInt64]
        var next = 0
        var present: Set<UInt64> = []
        init(size: Int) { slots = [UInt64](repeating: 0, count: size) }
    }

    private let rings: [NIOLockedValueBox<Ring>]
    private let salt: UInt64

    public init(capacity: Int = 65_536) {
        let perRing = max(1, capacity / 16)
        rings = (0..<16).map { _ in NIOLockedValueBox(Ring(size: perRing)) }
        var rng = SystemRandomNumberGenerator()
        salt = rng.next()
    }

    public func fingerprint(rule: UInt64, instance: UnsafeRawBufferPointer, key: [UInt8]) -> UInt64 {
        var h = Hasher()
        h.combine(salt)
        h.combine(rule)
        h.combine(instance.count)
        h.combine(bytes: instance)
        key.withUnsafeBytes { h.combine(bytes: $0) }
        let value = UInt64(bitPattern: Int64(h.finalize()))
        return value == 0 ? 1 : value  // 0 marks an empty slot
    }

    private func ring(_ value: UInt64) -> NIOLockedValueBox<Ring> { rings[Int(value >> 60)] }

    public func contains(_ value: UInt64) -> Bool {
        ring(value).withLockedValue { $0.present.contains(value) }
    }

    public func remember(_ value: UInt64) {
        ring(value).withLockedValue { ring in
            guard !ring.present.contains(value) else { return }
            let old = ring.slots[ring.next]
            if old != 0 { ring.present.remove(old) }
            ring.slots[ring.next] = value
            ring.present.insert(value)
            ring.next = (ring.next + 1) % ring.slots.count
        }
    }
}

// A bounded DNS answer cache shared by the SPF workers: answers are kept for their TTL
// (clamped), negative answers briefly, failures never. When full, the oldest entry goes.
// It does not deduplicate queries in flight: two workers asking at once both ask.

import Foundation

public final class DNSCache: @unchecked Sendable {
    struct Key: Hashable {
        let name: String
        let type: UInt16
    }
    struct Entry {
        let answer: DNSAnswer
        let expires: Date
        let serial: UInt64
    }

    public let capacity: Int
    private let lock = NSLock()
    private var entries: [Key: Entry] = [:]
    /// Insertion order, for eviction; stale slots are skipped by serial.
    private var order: [(Key, UInt64)] = []
    private var head = 0
    private var serial: UInt64 = 0
    private let minTTL: TimeInterval = 1
    private let maxTTL: TimeInterval = 3600
    private let negativeTTL: TimeInterval = 60

    public init(capacity: Int) {
        self.capacity = max(0, capacity)
    }

    public var count: Int { lock.withLock { entries.count } }

    public func answer(_ name: String, _ type: DNSType, now: Date = Date()) -> DNSAnswer? {
        let key = Key(name: name.lowercased(), type: type.rawValue)
        return lock.withLock {
            guard let entry = entries[key] else { return nil }
            if entry.expires <= now {
                entries[key] = nil
                return nil
            }
            return entry.answer
        }
    }

    public func store(_ name: String, _ type: DNSType, _ answer: DNSAnswer, now: Date = Date()) {
        guard capacity > 0 else { return }
        let lifetime: TimeInterval
        switch answer.status {
        case .success where !answer.records.isEmpty:
            lifetime = min(max(TimeInterval(answer.ttl), minTTL), maxTTL)
        case .success, .nameError:
            lifetime = min(max(TimeInterval(answer.ttl), minTTL), negativeTTL)
        case .serverFailure, .timeout, .invalidName:
            return
        }
        let key = Key(name: name.lowercased(), type: type.rawValue)
        lock.withLock {
            serial += 1
            if entries[key] == nil {
                while entries.count >= capacity, head < order.count { evictOldest() }
            }
            entries[key] = Entry(answer: answer, expires: now.addingTimeInterval(lifetime), serial: serial)
            order.append((key, serial))
            if order.count - head > 2 * capacity + 1024 {
                // Replaced entries leave stale slots: keep only the live ones, oldest first.
                order = order[head...].filter { entries[$0.0]?.serial == $0.1 }
                head = 0
            } else if head > 4096 && head * 2 > order.count {
                order.removeFirst(head)
                head = 0
            }
        }
    }

    private func evictOldest() {
        let (key, serial) = order[head]
        head += 1
        if entries[key]?.serial == serial { entries[key] = nil }
    }
}

// One loaded, immutable snapshot of the recipient tables: every normalised key in one
// byte arena, plus an open-addressing hash table whose slots hold each key's hash, place
// and length, so a lookup hashes the normalised address once per form tried, allocates
// nothing, and reaches a key in two memory reads (its slot, its octets) however large the
// table. Reloading builds a new
// snapshot and swaps it in (RecipientDirectory); a snapshot is never changed. Reading the
// files is in RecipientTableFile.swift; deciding what to answer is in RecipientsCheck.

import Foundation

/// What the table says about one address; what `backstop lookup` prints.
public enum RecipientLookupResult: Sendable, Equatable {
    /// The address is a mailbox (or its domain has a catch-all `@domain` entry).
    case valid(file: String, line: Int)
    /// The matching entry carries its own answer (`REJECT text`, `DEFER text`, `550 …`).
    case override(PolicyAction, file: String, line: Int)
    /// The domain is ours but no entry matches: the address does not exist.
    case unknown
    /// The domain is not one we receive mail for: no opinion.
    case notOurDomain
    /// Nothing to look up (an empty recipient, as at DATA with several recipients).
    case noAddress
}

public final class RecipientTable: Sendable {
    enum Kind: UInt8 { case mailbox = 0, catchAll = 1, domain = 2 }

    struct Entry {
        var offset: UInt32
        var length: UInt32
        var hash: UInt32
        var line: UInt32
        var file: UInt16
        var kind: Kind
        /// Index into `overrides`, or -1.
        var override: Int32
    }

    /// How a lookup ended, without building any String. `overridden`: the entry carries
    /// its own answer (read from `entries` only then).
    enum Match: Equatable {
        case noAddress, notOurDomain, unknown
        case entry(Int, overridden: Bool)
    }

    /// One slot of the hash table: what a probe compares, without reading `entries` (a
    /// table of a million keys is far larger than the CPU's caches, and each array read
    /// on the way to a key was a wait for memory: three per lookup before, two now).
    struct Probe {
        var hash: UInt32
        var offset: UInt32
        var length: UInt32
        /// The entry's index + 1 (0: an empty slot), with `overriddenBit` set when the
        /// entry carries its own answer.
        var entry: UInt32
        static let overriddenBit: UInt32 = 1 << 31
    }

    let arena: [UInt8]
    let entries: [Entry]
    let probes: [Probe]
    let mask: Int
    let seed: UInt64
    let overrides: [PolicyAction]
    /// The table files, in order; entries name their file by index. One more name,
    /// "configuration (domains)", stands for domains that only the configuration lists.
    public let files: [String]
    /// The case rule keys were stored with; lookups must use the same.
    public let caseSensitiveLocalPart: Bool
    /// Mailbox entries (user@domain).
    public let addressCount: Int
    /// Catch-all entries (@domain).
    public let catchAllCount: Int
    /// Domains we receive mail for (named in the tables or configured).
    public let domainCount: Int
    /// Octets of the arrays advised into huge pages (HugePages; 0 for a table under 2 MiB).
    let hugePageBytes: Int

    /// `slots`: a power of two, more than `entries.count`.
    init(arena: [UInt8], entries: [Entry], slots: Int, seed: UInt64, overrides: [PolicyAction],
         files: [String], caseSensitiveLocalPart: Bool) {
        self.arena = arena
        self.entries = entries
        // An entry index and the override bit share a slot's last word (a table has far
        // fewer entries: 4 GiB of keys of at least three octets each).
        precondition(entries.count < Int(Probe.overriddenBit), "too many recipient entries")
        // Entries go in in their order, as the builder's own table placed them.
        var probes = [Probe](repeating: Probe(hash: 0, offset: 0, length: 0, entry: 0), count: slots)
        let mask = slots - 1
        for (index, entry) in entries.enumerated() {
            var i = Int(entry.hash) & mask
            while probes[i].entry != 0 { i = (i + 1) & mask }
            probes[i] = Probe(hash: entry.hash, offset: entry.offset, length: entry.length,
                              entry: UInt32(index + 1) | (entry.override >= 0 ? Probe.overriddenBit : 0))
        }
        // Every lookup lands on a random slot and key: huge pages spare most of those reads
        // a page-table walk (a table of a million keys spans ~90 MiB).
        hugePageBytes = HugePages.advise(probes) + HugePages.advise(arena) + HugePages.advise(entries)
        self.probes = probes
        self.mask = mask
        self.seed = seed
        self.overrides = overrides
        self.files = files
        self.caseSensitiveLocalPart = caseSensitiveLocalPart
        var counts = (0, 0, 0)
        for entry in entries {
            switch entry.kind {
            case .mailbox: counts.0 += 1
            case .catchAll: counts.1 += 1; counts.2 += 1
            case .domain: counts.2 += 1
            }
        }
        (addressCount, catchAllCount, domainCount) = counts
    }

    deinit {
        guard hugePageBytes > 0 else { return }
        HugePages.unadvise(probes)
        HugePages.unadvise(arena)
        HugePages.unadvise(entries)
    }

    /// All entries: mailboxes, catch-alls and domains.
    public var entryCount: Int { entries.count }

    /// Octets held by the snapshot's arrays (keys, entries, hash slots).
    public var memoryBytes: Int {
        arena.capacity + entries.capacity * MemoryLayout<Entry>.stride + probes.capacity * MemoryLayout<Probe>.stride
    }

    @inline(__always)
    static func hash(_ key: UnsafePointer<UInt8>, _ count: Int, seed: UInt64) -> UInt32 {
        // FNV-1a, seeded per table so probe sequences differ between processes.
        var h: UInt64 = 0xcbf2_9ce4_8422_2325 ^ seed
        for i in 0..<count {
            h ^= UInt64(key[i])
            h = h &* 0x100_0000_01b3
        }
        h ^= h >> 29
        h = h &* 0xbf58_476d_1ce4_e5b9
        h ^= h >> 32
        return UInt32(truncatingIfNeeded: h)
    }

    /// The entry with exactly this key, or nil.
    func find(_ key: UnsafePointer<UInt8>, _ count: Int) -> Match? {
        let h = Self.hash(key, count, seed: seed)
        return arena.withUnsafeBufferPointer { arena in
            probes.withUnsafeBufferPointer { probes in
                var i = Int(h) & mask
                while true {
                    let probe = probes[i]
                    if probe.entry == 0 { return nil }
                    if probe.hash == h, Int(probe.length) == count,
                       memcmp(arena.baseAddress! + Int(probe.offset), key, count) == 0 {
                        return .entry(Int(probe.entry & ~Probe.overriddenBit) - 1,
                                      overridden: probe.entry & Probe.overriddenBit != 0)
                    }
                    i = (i + 1) & mask
                }
            }
        }
    }

    /// The lookup itself, on the raw bytes of the address: full address, then without
    /// its extension, then the domain's catch-all; the domain decides whether it is ours.
    func match(_ address: UnsafeRawBufferPointer, rules: RecipientNormalisation) -> Match {
        if address.isEmpty { return .noAddress }
        var rules = rules
        rules.caseSensitiveLocalPart = caseSensitiveLocalPart
        return AddressNormaliser.withNormalised(address, rules: rules, forLookup: true) { result, buffer in
            guard case .success(let a) = result else { return .notOurDomain }
            let domainKey = buffer + a.localLength  // "@domain"
            let domainLength = a.length - a.localLength
            guard case .entry(let domain, let overridden)? = find(domainKey, domainLength) else { return .notOurDomain }
            if a.localLength > 0, let full = find(buffer, a.length) { return full }
            if let split = a.extensionAt {
                // Build "user@domain" behind the address and try that.
                let stripped = buffer + a.length
                stripped.update(from: buffer, count: split)
                (stripped + split).update(from: domainKey, count: domainLength)
                if let found = find(stripped, split + domainLength) { return found }
            }
            return entries[domain].kind == .catchAll ? .entry(domain, overridden: overridden) : .unknown
        }
    }

    func match(_ address: String, rules: RecipientNormalisation) -> Match {
        Octets.with(address) { match($0, rules: rules) }
    }

    /// Looks `address` up as a request would; for the CLI and tests (builds Strings).
    public func lookup(_ address: String, rules: RecipientNormalisation = RecipientNormalisation()) -> RecipientLookupResult {
        switch match(address, rules: rules) {
        case .noAddress: return .noAddress
        case .notOurDomain: return .notOurDomain
        case .unknown: return .unknown
        case .entry(let index, _):
            let entry = entries[index]
            let file = files[Int(entry.file)]
            if entry.override >= 0 { return .override(overrides[Int(entry.override)], file: file, line: Int(entry.line)) }
            return .valid(file: file, line: Int(entry.line))
        }
    }

    /// The key an entry was stored under, as text (`user@domain` or `@domain`).
    func key(of index: Int) -> String {
        let entry = entries[index]
        return String(decoding: arena[Int(entry.offset)..<Int(entry.offset + entry.length)], as: UTF8.self)
    }

    /// The normalised key an address is looked up under, and the entry that matched, for `backstop lookup`.
    public func explain(_ address: String, rules: RecipientNormalisation = RecipientNormalisation())
        -> (normalised: String?, matchedKey: String?) {
        var rules = rules
        rules.caseSensitiveLocalPart = caseSensitiveLocalPart
        let normalised: String? = Octets.with(address) { bytes in
            AddressNormaliser.withNormalised(bytes, rules: rules, forLookup: true) { result, buffer in
                guard case .success(let a) = result else { return nil }
                return String(decoding: UnsafeBufferPointer(start: buffer, count: a.length), as: UTF8.self)
            }
        }
        if case .entry(let index, _) = match(address, rules: rules) { return (normalised, key(of: index)) }
        return (normalised, nil)
    }
}

/// Collects entries while table files are read, then freezes them into a RecipientTable.
/// Later entries for the same key replace earlier ones (within a file and across files).
struct RecipientTableBuilder {
    private var arena: [UInt8] = []
    /// Octets of keys not kept because the arena was full.
    private var dropped = 0
    private var entries: [RecipientTable.Entry] = []
    private var slots: [UInt32]
    private let seed: UInt64
    private var overrides: [PolicyAction] = []
    let rules: RecipientNormalisation
    /// The domain of the previous mailbox line, so runs of one domain register it once.
    private var lastDomain: [UInt8] = []

    init(expectedEntries: Int, expectedKeyBytes: Int = 0, rules: RecipientNormalisation) {
        self.rules = rules
        self.seed = UInt64.random(in: 0...UInt64.max)
        var capacity = 16
        while capacity < expectedEntries * 2 { capacity <<= 1 }
        slots = Array(repeating: 0, count: capacity)
        entries.reserveCapacity(expectedEntries)
        // Keys are at most as long as the files (values and comments make them shorter).
        arena.reserveCapacity(min(expectedKeyBytes > 0 ? expectedKeyBytes : Int.max, expectedEntries * 32))
    }

    /// Adds one key as written in a table; returns why it was refused, if it was.
    mutating func add(key: UnsafeRawBufferPointer, file: Int, line: Int, override: PolicyAction?) -> AddressNormaliser.Failure? {
        var keyRules = rules
        keyRules.stripBATV = false
        keyRules.recipientDelimiters = []
        return AddressNormaliser.withNormalised(key, rules: keyRules, forLookup: false) { result, buffer in
            switch result {
            case .failure(let failure): return failure
            case .success(let a):
                let overrideIndex: Int32
                if let override { overrides.append(override); overrideIndex = Int32(overrides.count - 1) } else { overrideIndex = -1 }
                if a.localLength == 0 {
                    insert(buffer, a.length, kind: .catchAll, file: file, line: line, override: overrideIndex)
                } else {
                    insert(buffer, a.length, kind: .mailbox, file: file, line: line, override: overrideIndex)
                    let domain = UnsafeBufferPointer(start: buffer + a.localLength, count: a.length - a.localLength)
                    if !domain.elementsEqual(lastDomain) {
                        insert(buffer + a.localLength, domain.count, kind: .domain, file: file, line: line, override: -1)
                        lastDomain = Array(domain)
                    }
                }
                return nil
            }
        }
    }

    /// Registers a domain: from the configuration (`domains = [...]`), or a table's
    /// virtual(5) domain line. It never replaces an entry (a catch-all stays one).
    mutating func addDomain(_ domain: String, file: Int, line: Int = 0) -> AddressNormaliser.Failure? {
        var key = "@" + domain
        return key.withUTF8 { bytes in
            AddressNormaliser.withNormalised(UnsafeRawBufferPointer(bytes), rules: rules, forLookup: false) { result, buffer in
                switch result {
                case .failure(let failure): return failure
                case .success(let a):
                    insert(buffer, a.length, kind: .domain, file: file, line: line, override: -1)
                    return nil
                }
            }
        }
    }

    private mutating func insert(_ key: UnsafePointer<UInt8>, _ count: Int, kind: RecipientTable.Kind,
                                 file: Int, line: Int, override: Int32) {
        let h = RecipientTable.hash(key, count, seed: seed)
        var i = Int(h) & (slots.count - 1)
        while true {
            let slot = slots[i]
            if slot == 0 { break }
            let index = Int(slot - 1)
            let entry = entries[index]
            if entry.hash == h, Int(entry.length) == count,
               arena.withUnsafeBufferPointer({ memcmp($0.baseAddress! + Int(entry.offset), key, count) }) == 0 {
                // Already there. A domain registration never replaces anything; a catch-all
                // turns a plain domain into a catch-all; otherwise the later entry wins.
                if kind == .domain { return }
                entries[index].kind = kind
                entries[index].file = UInt16(file)
                entries[index].line = UInt32(clamping: line)
                entries[index].override = override
                return
            }
            i = (i + 1) & (slots.count - 1)
        }
        // Offsets are 32 bits: beyond 4 GiB the key is counted, not kept, and the file
        // reader reports the tables as too large (arenaSize).
        guard arena.count + count <= Int(UInt32.max) else {
            dropped += count
            return
        }
        let offset = arena.count
        arena.append(contentsOf: UnsafeBufferPointer(start: key, count: count))
        entries.append(.init(offset: UInt32(offset), length: UInt32(count), hash: h, line: UInt32(clamping: line),
                             file: UInt16(file), kind: kind, override: override))
        slots[i] = UInt32(entries.count)
        if entries.count * 2 > slots.count { grow() }
    }

    private mutating func grow() {
        var bigger = [UInt32](repeating: 0, count: slots.count * 2)
        let mask = bigger.count - 1
        for (index, entry) in entries.enumerated() {
            var i = Int(entry.hash) & mask
            while bigger[i] != 0 { i = (i + 1) & mask }
            bigger[i] = UInt32(index + 1)
        }
        slots = bigger
    }

    /// Octets of key storage so far: a table is limited to 4 GiB of keys.
    var arenaSize: Int { arena.count + dropped }

    /// The snapshot. The builder's own hash table is let go first: the snapshot builds its
    /// slots from the entries, and both at once would raise the peak of a large load.
    mutating func finish(files: [String]) -> RecipientTable {
        let slotCount = slots.count
        slots = []
        // Give back what the estimates reserved too much of: the snapshot lives long.
        let arena = arena.capacity > arena.count + arena.count / 8 + 4096 ? arena.withUnsafeBufferPointer { Array($0) } : arena
        let entries = entries.capacity > entries.count + entries.count / 8 + 256
            ? entries.withUnsafeBufferPointer { Array($0) } : entries
        return RecipientTable(arena: arena, entries: entries, slots: slotCount, seed: seed, overrides: overrides,
                              files: files, caseSensitiveLocalPart: rules.caseSensitiveLocalPart)
    }
}

// Puts a large, long-lived, already filled array in transparent huge pages (2 MiB) where the
// kernel offers them. A lookup in a table of a million keys lands on a random page each
// time: with 4 KiB pages nearly every lookup also misses the TLB and walks the page tables
// (twice over in a virtual machine), and that walk cost as much as the lookup's own cache
// misses. It is advice only: it changes no value, and it follows the administrator's
// setting: with THP "never" (or no THP) nothing is asked (MADV_COLLAPSE alone would ignore
// that setting); an old kernel or no free 2 MiB page leaves the pages as they are. It is not
// an allocator.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public enum HugePages {
    /// The huge page size of x86-64 and arm64 (with 4 KiB base pages).
    public static let size = 2 << 20

    /// MADV_COLLAPSE (Linux 6.1): collapse the range into huge pages now, synchronously,
    /// instead of waiting for khugepaged. Named here: Debian 12's C headers predate it.
    static let collapse: Int32 = 25

    /// The kernel's THP mode ("always", "madvise" or "never"), read once; nil without THP.
    public static let mode: String? = {
        #if os(Linux)
        guard let file = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r") else { return nil }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 128)
        guard fgets(&line, Int32(line.count), file) != nil else { return nil }
        let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard let open = text.firstIndex(of: "["), let close = text.firstIndex(of: "]"), open < close else { return nil }
        return String(text[text.index(after: open)..<close])
        #else
        return nil
        #endif
    }()

    /// Advises the kernel to back the whole 2 MiB pages inside `buffer` with huge pages and
    /// asks it to do so at once. Returns the octets advised (0 when the buffer holds no whole
    /// huge page, THP is "never" or absent, or the platform has no such advice). Call it after
    /// the array is filled and before it is shared: it copies the memory it collapses (about
    /// 1 ms per 20 MiB).
    @discardableResult
    public static func advise(_ buffer: UnsafeRawBufferPointer) -> Int {
        guard mode == "always" || mode == "madvise", let (pointer, length) = pages(in: buffer) else { return 0 }
        #if os(Linux)
        guard madvise(pointer, length, MADV_HUGEPAGE) == 0 else { return 0 }
        // EINVAL before Linux 6.1, EAGAIN or ENOMEM without free huge pages: the advice above
        // still lets khugepaged collapse the range later.
        _ = madvise(pointer, length, collapse)
        return length
        #else
        return 0
        #endif
    }

    /// Takes the advice back from memory about to be freed: an array below glibc's mmap
    /// threshold lives in the heap, whose range would otherwise keep inviting khugepaged to
    /// collapse whatever is allocated there next, sparse or not.
    public static func unadvise(_ buffer: UnsafeRawBufferPointer) {
        guard let (pointer, length) = pages(in: buffer) else { return }
        #if os(Linux)
        _ = madvise(pointer, length, MADV_NOHUGEPAGE)
        #endif
    }

    /// The whole 2 MiB pages inside `buffer`, or nil when it holds none.
    private static func pages(in buffer: UnsafeRawBufferPointer) -> (UnsafeMutableRawPointer, Int)? {
        guard let base = buffer.baseAddress else { return nil }
        let start = (UInt(bitPattern: base) + UInt(size - 1)) & ~UInt(size - 1)
        let end = (UInt(bitPattern: base) + UInt(buffer.count)) & ~UInt(size - 1)
        guard end > start, let pointer = UnsafeMutableRawPointer(bitPattern: start) else { return nil }
        return (pointer, Int(end - start))
    }

    /// The same for an array's elements.
    @discardableResult
    public static func advise<T>(_ array: [T]) -> Int {
        array.withUnsafeBytes { advise($0) }
    }

    public static func unadvise<T>(_ array: [T]) {
        array.withUnsafeBytes { unadvise($0) }
    }
}

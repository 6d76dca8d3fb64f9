// Puts a large, long-lived, already filled array in transparent huge pages (2 MiB) where the
// kernel offers them. A lookup in a table of a million keys lands on a random page each
// time: with 4 KiB pages nearly every lookup also misses the TLB and walks the page tables
// (twice over in a virtual machine), and that walk cost as much as the lookup's own cache
// misses. It is advice only: it changes no value, and where the kernel has no huge pages
// (THP "never", an old kernel, no free 2 MiB page) nothing happens. It is not an allocator.

#if canImport(Glibc)
import Glibc
#endif

public enum HugePages {
    /// The huge page size of x86-64 and arm64 (with 4 KiB base pages).
    public static let size = 2 << 20

    /// MADV_COLLAPSE (Linux 6.1): collapse the range into huge pages now, synchronously,
    /// instead of waiting for khugepaged. Named here: Debian 12's C headers predate it.
    static let collapse: Int32 = 25

    /// Advises the kernel to back the whole 2 MiB pages inside `buffer` with huge pages and
    /// asks it to do so at once. Returns the octets advised (0 when the buffer holds no whole
    /// huge page or the platform has no such advice). Call it after the array is filled and
    /// before it is shared: it copies the memory it collapses (about 1 ms per 20 MiB).
    @discardableResult
    public static func advise(_ buffer: UnsafeRawBufferPointer) -> Int {
        #if os(Linux)
        guard let base = buffer.baseAddress else { return 0 }
        let start = (UInt(bitPattern: base) + UInt(size - 1)) & ~UInt(size - 1)
        let end = (UInt(bitPattern: base) + UInt(buffer.count)) & ~UInt(size - 1)
        guard end > start, let pointer = UnsafeMutableRawPointer(bitPattern: start) else { return 0 }
        let length = Int(end - start)
        guard madvise(pointer, length, MADV_HUGEPAGE) == 0 else { return 0 }
        // EINVAL before Linux 6.1, EAGAIN or ENOMEM without free huge pages: the advice above
        // still lets khugepaged collapse the range later.
        _ = madvise(pointer, length, collapse)
        return length
        #else
        return 0
        #endif
    }

    /// The same for an array's elements.
    @discardableResult
    public static func advise<T>(_ array: [T]) -> Int {
        array.withUnsafeBytes { advise($0) }
    }
}

/// A guest-physical address. No raw arithmetic: offsets go through checked methods that
/// return nil on overflow, so a value from the guest or the network cannot wrap around.
public struct GuestPhysicalAddress: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let raw: UInt64
    public init(_ raw: UInt64) { self.raw = raw }

    public static let pageSize: UInt64 = 4096

    /// `self + offset`, or nil on overflow.
    public func adding(_ offset: UInt64) -> GuestPhysicalAddress? {
        let (sum, overflow) = raw.addingReportingOverflow(offset)
        return overflow ? nil : GuestPhysicalAddress(sum)
    }

    /// `self - base`, or nil when `base` is above `self`.
    public func offset(from base: GuestPhysicalAddress) -> UInt64? {
        raw >= base.raw ? raw - base.raw : nil
    }

    public var isPageAligned: Bool { raw % Self.pageSize == 0 }
    public var frame: PageFrame { PageFrame(raw / Self.pageSize) }

    public static func < (a: Self, b: Self) -> Bool { a.raw < b.raw }
    public var description: String { "0x" + String(raw, radix: 16) }
}

/// A guest page frame number (GPA / 4096).
public struct PageFrame: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let number: UInt64
    public init(_ number: UInt64) { self.number = number }

    /// The frame's first byte, or nil when it lies beyond the 64-bit address space.
    public var address: GuestPhysicalAddress? {
        let (product, overflow) = number.multipliedReportingOverflow(by: GuestPhysicalAddress.pageSize)
        return overflow ? nil : GuestPhysicalAddress(product)
    }

    public static func < (a: Self, b: Self) -> Bool { a.number < b.number }
    public var description: String { "pfn 0x" + String(number, radix: 16) }
}

/// A half-open range of guest-physical addresses `[start, start + size)`.
public struct GuestRange: Hashable, Sendable, CustomStringConvertible {
    public let start: GuestPhysicalAddress
    public let size: UInt64

    /// Nil when the range would run past the end of the address space.
    public init?(start: GuestPhysicalAddress, size: UInt64) {
        guard start.adding(size) != nil else { return nil }
        self.start = start
        self.size = size
    }

    public var end: GuestPhysicalAddress { GuestPhysicalAddress(start.raw + size) } // checked in init

    public func contains(_ other: GuestRange) -> Bool {
        other.start >= start && other.end <= end
    }

    public func overlaps(_ other: GuestRange) -> Bool {
        other.start < end && start < other.end && size > 0 && other.size > 0
    }

    public var description: String { "[\(start), \(end))" }
}

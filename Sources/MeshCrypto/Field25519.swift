/// Arithmetic modulo p = 2^255 - 19, just enough to map an Ed25519 public key to its X25519 form
/// (u = (1 + y) / (1 - y)) in a few microseconds. libsodium's `crypto_sign_ed25519_pk_to_curve25519`
/// also decompresses the point and checks its subgroup, which costs more than the key agreement
/// itself; sealed datagrams do not need that check (see `PublicKey.x25519ForAgreement`).
///
/// Four 64-bit limbs, least significant first; values are kept below 2^256 and reduced to
/// canonical form only when encoded.
struct FieldElement: Equatable {
    var l: (UInt64, UInt64, UInt64, UInt64)

    static let zero = FieldElement(l: (0, 0, 0, 0))
    static let one = FieldElement(l: (1, 0, 0, 0))
    /// p = 2^255 - 19.
    static let p = FieldElement(l: (0xFFFF_FFFF_FFFF_FFED, 0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF, 0x7FFF_FFFF_FFFF_FFFF))

    /// Reads 32 little-endian bytes; nil unless the value is canonical (below p, top bit clear).
    init?(canonical bytes: [UInt8]) {
        guard bytes.count == 32 else { return nil }
        var w: [UInt64] = [0, 0, 0, 0]
        for i in 0..<32 { w[i / 8] |= UInt64(bytes[i]) << UInt64(8 * (i % 8)) }
        l = (w[0], w[1], w[2], w[3])
        guard !FieldElement.isAtLeastP(l) else { return nil }
    }

    init(l: (UInt64, UInt64, UInt64, UInt64)) { self.l = l }

    static func == (a: FieldElement, b: FieldElement) -> Bool {
        let x = a.canonical.l, y = b.canonical.l
        return x.0 == y.0 && x.1 == y.1 && x.2 == y.2 && x.3 == y.3
    }

    private static func isAtLeastP(_ v: (UInt64, UInt64, UInt64, UInt64)) -> Bool {
        if v.3 != p.l.3 { return v.3 > p.l.3 }
        if v.2 != p.l.2 { return v.2 > p.l.2 }
        if v.1 != p.l.1 { return v.1 > p.l.1 }
        return v.0 >= p.l.0
    }

    /// The value reduced below p.
    var canonical: FieldElement {
        var v = l
        // Below 2^256 < 3p: subtract p at most twice.
        for _ in 0..<2 where FieldElement.isAtLeastP(v) {
            var borrow: Bool
            (v.0, borrow) = v.0.subtractingReportingOverflow(FieldElement.p.l.0)
            (v.1, borrow) = Self.sub(v.1, FieldElement.p.l.1, borrow)
            (v.2, borrow) = Self.sub(v.2, FieldElement.p.l.2, borrow)
            (v.3, _) = Self.sub(v.3, FieldElement.p.l.3, borrow)
        }
        return FieldElement(l: v)
    }

    /// 32 little-endian bytes of the canonical value.
    var bytes: [UInt8] {
        let c = canonical.l
        var out = [UInt8](repeating: 0, count: 32)
        for (i, w) in [c.0, c.1, c.2, c.3].enumerated() {
            for j in 0..<8 { out[i * 8 + j] = UInt8(truncatingIfNeeded: w >> UInt64(8 * j)) }
        }
        return out
    }

    private static func add(_ a: UInt64, _ b: UInt64, _ carry: Bool) -> (UInt64, Bool) {
        let (s1, o1) = a.addingReportingOverflow(b)
        let (s2, o2) = s1.addingReportingOverflow(carry ? 1 : 0)
        return (s2, o1 || o2)
    }

    private static func sub(_ a: UInt64, _ b: UInt64, _ borrow: Bool) -> (UInt64, Bool) {
        let (d1, o1) = a.subtractingReportingOverflow(b)
        let (d2, o2) = d1.subtractingReportingOverflow(borrow ? 1 : 0)
        return (d2, o1 || o2)
    }

    /// Adds `c * 38` (2^256 ≡ 38) into v, folding any carry out of the top limb.
    private static func fold(_ v: inout (UInt64, UInt64, UInt64, UInt64), _ c: UInt64) {
        var extra = c
        while extra != 0 {
            let (hiMul, lo) = extra.multipliedFullWidth(by: 38)
            var carry: Bool
            (v.0, carry) = v.0.addingReportingOverflow(lo)
            (v.1, carry) = add(v.1, hiMul, carry)
            (v.2, carry) = add(v.2, 0, carry)
            (v.3, carry) = add(v.3, 0, carry)
            extra = carry ? 1 : 0
        }
    }

    static func + (a: FieldElement, b: FieldElement) -> FieldElement {
        var v = a.l
        var c: Bool
        (v.0, c) = v.0.addingReportingOverflow(b.l.0)
        (v.1, c) = add(v.1, b.l.1, c)
        (v.2, c) = add(v.2, b.l.2, c)
        (v.3, c) = add(v.3, b.l.3, c)
        fold(&v, c ? 1 : 0)
        return FieldElement(l: v)
    }

    static func - (a: FieldElement, bIn: FieldElement) -> FieldElement {
        // a + 2p - b with b reduced below p stays positive (it is above a + p); fold what
        // exceeds 2^256.
        let b = bIn.canonical
        let twoP: (UInt64, UInt64, UInt64, UInt64) = (0xFFFF_FFFF_FFFF_FFDA, 0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF)
        var v = a.l
        var c: Bool
        (v.0, c) = v.0.addingReportingOverflow(twoP.0)
        (v.1, c) = add(v.1, twoP.1, c)
        (v.2, c) = add(v.2, twoP.2, c)
        (v.3, c) = add(v.3, twoP.3, c)
        var top: UInt64 = c ? 1 : 0
        var borrow: Bool
        (v.0, borrow) = v.0.subtractingReportingOverflow(b.l.0)
        (v.1, borrow) = sub(v.1, b.l.1, borrow)
        (v.2, borrow) = sub(v.2, b.l.2, borrow)
        (v.3, borrow) = sub(v.3, b.l.3, borrow)
        if borrow { top -= 1 }  // a + 2p - b > 0, so a borrow here always follows a carry above
        fold(&v, top)
        return FieldElement(l: v)
    }

    /// One row of the schoolbook product: acc[i...i+4] += x * (y0, y1, y2, y3).
    @inline(__always)
    private static func mulRow(_ x: UInt64, _ y: (UInt64, UInt64, UInt64, UInt64),
                               _ a0: inout UInt64, _ a1: inout UInt64, _ a2: inout UInt64, _ a3: inout UInt64, _ a4: inout UInt64) {
        var carry: UInt64 = 0
        @inline(__always) func step(_ yj: UInt64, _ acc: inout UInt64) {
            let (hi, lo) = x.multipliedFullWidth(by: yj)
            let (s1, o1) = acc.addingReportingOverflow(lo)
            let (s2, o2) = s1.addingReportingOverflow(carry)
            acc = s2
            carry = hi &+ (o1 ? 1 : 0) &+ (o2 ? 1 : 0)  // hi <= 2^64 - 2: no overflow
        }
        step(y.0, &a0); step(y.1, &a1); step(y.2, &a2); step(y.3, &a3)
        a4 = carry
    }

    static func * (a: FieldElement, b: FieldElement) -> FieldElement {
        // 512-bit product in eight limbs, no heap allocation.
        var t0: UInt64 = 0, t1: UInt64 = 0, t2: UInt64 = 0, t3: UInt64 = 0, t4: UInt64 = 0, t5: UInt64 = 0, t6: UInt64 = 0, t7: UInt64 = 0
        mulRow(a.l.0, b.l, &t0, &t1, &t2, &t3, &t4)
        mulRow(a.l.1, b.l, &t1, &t2, &t3, &t4, &t5)
        mulRow(a.l.2, b.l, &t2, &t3, &t4, &t5, &t6)
        mulRow(a.l.3, b.l, &t3, &t4, &t5, &t6, &t7)
        // Reduce: value = low + 2^256 * high ≡ low + 38 * high.
        let (h0, l0) = t4.multipliedFullWidth(by: 38)
        let (h1, l1) = t5.multipliedFullWidth(by: 38)
        let (h2, l2) = t6.multipliedFullWidth(by: 38)
        let (h3, l3) = t7.multipliedFullWidth(by: 38)
        var v = (t0, t1, t2, t3)
        var c: Bool
        (v.0, c) = v.0.addingReportingOverflow(l0)
        (v.1, c) = add(v.1, l1, c)
        (v.2, c) = add(v.2, l2, c)
        (v.3, c) = add(v.3, l3, c)
        var carryLimb = h3 + (c ? 1 : 0)
        (v.1, c) = v.1.addingReportingOverflow(h0)
        (v.2, c) = add(v.2, h1, c)
        (v.3, c) = add(v.3, h2, c)
        carryLimb += c ? 1 : 0
        fold(&v, carryLimb)
        return FieldElement(l: v)
    }

    func squared(_ times: Int = 1) -> FieldElement {
        var r = self
        for _ in 0..<times { r = r * r }
        return r
    }

    /// The inverse, as self^(p-2) by the usual addition chain (254 squarings, 11 multiplications).
    var inverse: FieldElement {
        let z = self
        let z2 = z.squared()
        let z9 = z2.squared(2) * z
        let z11 = z9 * z2
        let z2_5_0 = z11.squared() * z9
        let z2_10_0 = z2_5_0.squared(5) * z2_5_0
        let z2_20_0 = z2_10_0.squared(10) * z2_10_0
        let z2_40_0 = z2_20_0.squared(20) * z2_20_0
        let z2_50_0 = z2_40_0.squared(10) * z2_10_0
        let z2_100_0 = z2_50_0.squared(50) * z2_50_0
        let z2_200_0 = z2_100_0.squared(100) * z2_100_0
        let z2_250_0 = z2_200_0.squared(50) * z2_50_0
        return z2_250_0.squared(5) * z11
    }
}

extension PublicKey {
    /// The X25519 public key for key agreement with this Ed25519 key, u = (1 + y) / (1 - y),
    /// computed directly from the encoded y (sign bit ignored, as the map ignores it).
    ///
    /// Unlike `x25519()` this does not decompress the point or check its subgroup, so it is
    /// several times cheaper. That is safe where only a shared secret is derived: whoever sends
    /// under this key must hold the X25519 secret for u, a low-order u yields an all-zero shared
    /// secret that `sharedSecret(with:)` refuses, and anything needing the Ed25519 identity itself
    /// (a signature, a channel proof) is checked with libsodium. Nil for a non-canonical y or y = 1.
    public func x25519ForAgreement() -> [UInt8]? {
        var yBytes = bytes
        yBytes[31] &= 0x7F
        guard let y = FieldElement(canonical: yBytes) else { return nil }
        let denominator = FieldElement.one - y
        guard denominator != FieldElement.zero else { return nil }
        return ((FieldElement.one + y) * denominator.inverse).bytes
    }
}

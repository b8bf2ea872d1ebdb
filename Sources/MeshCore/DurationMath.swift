extension Duration {
    /// The duration in milliseconds, as a floating-point number.
    public var milliseconds: Double {
        let (s, atto) = components
        return Double(s) * 1e3 + Double(atto) / 1e15
    }

    /// The duration in whole nanoseconds.
    public var nanoseconds: Int64 {
        let (s, atto) = components
        return s * 1_000_000_000 + atto / 1_000_000_000
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// NVIDIA's management library, loaded with `dlopen` at run time: the binary has no link-time
/// dependency on the driver, and hosts without it simply report that NVML is absent. This file
/// is the one door to NVML; its C types never leave it.
public enum NVML {
    /// The library's soname as the driver installs it.
    public static let defaultLibrary = "libnvidia-ml.so.1"

    // The NVML entry points used, with their C signatures (nvml.h; nvmlDevice_t is an opaque
    // pointer, nvmlMemory_t is three unsigned long longs: total, free, used; every call returns
    // nvmlReturn_t, 0 for success).
    private typealias InitFn = @convention(c) () -> Int32
    private typealias CountFn = @convention(c) (UnsafeMutablePointer<UInt32>) -> Int32
    private typealias HandleFn = @convention(c) (UInt32, UnsafeMutablePointer<OpaquePointer?>) -> Int32
    private typealias DeviceStringFn = @convention(c) (OpaquePointer?, UnsafeMutablePointer<CChar>, UInt32) -> Int32
    private typealias MemoryFn = @convention(c) (OpaquePointer?, UnsafeMutablePointer<UInt64>) -> Int32
    private typealias CapabilityFn = @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Int32>) -> Int32
    private typealias SystemStringFn = @convention(c) (UnsafeMutablePointer<CChar>, UInt32) -> Int32
    private typealias CUDAVersionFn = @convention(c) (UnsafeMutablePointer<Int32>) -> Int32
    private typealias ErrorStringFn = @convention(c) (Int32) -> UnsafePointer<CChar>?

    /// The GPUs NVML reports: name, UUID, total and free memory, compute capability, driver and
    /// CUDA versions. Throws when the library is missing, lacks an entry point, or fails to start.
    public static func detect(library: String = defaultLibrary) throws(DetectionError) -> [GPUInfo] {
        guard let lib = dlopen(library, RTLD_NOW | RTLD_LOCAL) else {
            let why = dlerror().map { String(cString: $0) } ?? "not found"
            throw DetectionError(line: 0, "NVML is not available (\(why))")
        }
        defer { dlclose(lib) }
        func symbol<T>(_ name: String, as _: T.Type) throws(DetectionError) -> T {
            guard let p = dlsym(lib, name) else { throw DetectionError(line: 0, "NVML has no \(name)") }
            return unsafeBitCast(p, to: T.self)
        }
        let initialise = try symbol("nvmlInit_v2", as: InitFn.self)
        let shutdown = try symbol("nvmlShutdown", as: InitFn.self)
        let count = try symbol("nvmlDeviceGetCount_v2", as: CountFn.self)
        let handle = try symbol("nvmlDeviceGetHandleByIndex_v2", as: HandleFn.self)
        let name = try symbol("nvmlDeviceGetName", as: DeviceStringFn.self)
        let uuid = try symbol("nvmlDeviceGetUUID", as: DeviceStringFn.self)
        let memory = try symbol("nvmlDeviceGetMemoryInfo", as: MemoryFn.self)
        let capability = try symbol("nvmlDeviceGetCudaComputeCapability", as: CapabilityFn.self)
        let driver = try symbol("nvmlSystemGetDriverVersion", as: SystemStringFn.self)
        let cuda = try symbol("nvmlSystemGetCudaDriverVersion", as: CUDAVersionFn.self)
        let errorString = try? symbol("nvmlErrorString", as: ErrorStringFn.self)

        func describe(_ code: Int32) -> String {
            errorString.flatMap { $0(code) }.map { String(cString: $0) } ?? "NVML error \(code)"
        }
        let started = initialise()
        guard started == 0 else { throw DetectionError(line: 0, "NVML did not start: \(describe(started))") }
        defer { _ = shutdown() }

        func text(_ body: (UnsafeMutablePointer<CChar>, UInt32) -> Int32) -> String? {
            var buffer = [CChar](repeating: 0, count: 256)
            let ok = buffer.withUnsafeMutableBufferPointer { body($0.baseAddress!, UInt32($0.count - 1)) } == 0
            guard ok else { return nil }
            return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        let driverVersion = text(driver)
        var cudaRaw: Int32 = 0
        let cudaVersion = cuda(&cudaRaw) == 0 && cudaRaw > 0 ? "\(cudaRaw / 1000).\(cudaRaw % 1000 / 10)" : nil

        var n: UInt32 = 0
        let counted = count(&n)
        guard counted == 0 else { throw DetectionError(line: 0, "NVML could not count GPUs: \(describe(counted))") }
        var gpus: [GPUInfo] = []
        for i in 0..<min(n, 256) {
            var device: OpaquePointer?
            let got = handle(i, &device)
            guard got == 0 else { throw DetectionError(line: 0, "NVML could not open GPU \(i): \(describe(got))") }
            guard let model = text({ name(device, $0, $1) }) else { throw DetectionError(line: 0, "NVML gave no name for GPU \(i)") }
            var mem = [UInt64](repeating: 0, count: 3)
            let memOK = mem.withUnsafeMutableBufferPointer { memory(device, $0.baseAddress!) } == 0
            guard memOK else { throw DetectionError(line: 0, "NVML gave no memory figures for GPU \(i)") }
            var major: Int32 = 0, minor: Int32 = 0
            let cc = capability(device, &major, &minor) == 0 ? "\(major).\(minor)" : nil
            let total = Int(mem[0] / 1_048_576)
            gpus.append(GPUInfo(index: Int(i), name: model, slug: GPUCatalogue.slug(for: model, memoryMiB: total), vendor: "nvidia",
                                uuid: text({ uuid(device, $0, $1) }), memoryTotalMiB: total, memoryFreeMiB: Int(mem[1] / 1_048_576),
                                computeCapability: cc, driverVersion: driverVersion, cudaVersion: cudaVersion, source: .nvml))
        }
        return gpus
    }
}

import Foundation
@testable import MeshJobs
import Testing

private func fixture(_ name: String) throws -> String {
    let url = try #require(Bundle.module.url(forResource: "Fixtures/" + name, withExtension: nil))
    return try String(contentsOf: url, encoding: .utf8)
}

@Suite("GPU catalogue and model names")
struct CatalogueTests {
    @Test("driver names, marketing names and memory variants normalise to one slug")
    func slugs() {
        let cases: [(String, Int?, String)] = [
            ("NVIDIA GeForce RTX 4090", nil, "rtx-4090"), ("RTX 4090", nil, "rtx-4090"), ("rtx-4090", nil, "rtx-4090"),
            ("NVIDIA A100-SXM4-80GB", nil, "a100-80gb"), ("NVIDIA A100-PCIE-40GB", nil, "a100-40gb"),
            ("NVIDIA A100 80GB PCIe", nil, "a100-80gb"), ("NVIDIA H100 80GB HBM3", nil, "h100-80gb"),
            ("NVIDIA H100 PCIe", 81_559, "h100-80gb"), ("NVIDIA H200", 143_771, "h200"),
            ("Tesla V100-SXM2-16GB", nil, "v100-16gb"), ("Tesla V100-PCIE-32GB", nil, "v100-32gb"), ("Tesla T4", nil, "t4"),
            ("NVIDIA L40S", nil, "l40s"), ("NVIDIA RTX A6000", nil, "rtx-a6000"), ("AMD Instinct MI300X", nil, "mi300x"),
            ("AMD Radeon RX 7900 XTX", nil, "rx-7900-xtx"),
            // Unknown models keep a slug made the same way.
            ("NVIDIA GeForce GTX 1650 SUPER", nil, "gtx-1650-super"), ("Acme Tensor 9000 (TM)", nil, "acme-tensor-9000"),
        ]
        for (name, memory, slug) in cases { #expect(GPUCatalogue.slug(for: name, memoryMiB: memory) == slug, "\(name)") }
    }

    @Test("the catalogue's data file parses whole: unique slugs, sane figures")
    func catalogue() {
        let models = GPUCatalogue.models
        #expect(models.count == GPUCatalogueData.table.split(separator: "\n").filter { !$0.trimmedString.hasPrefix("#") }.count)
        #expect(Set(models.map(\.slug)).count == models.count)
        for m in models {
            #expect(m.vramGiB > 0 && m.fp32TFLOPS > 0 && m.fp16TFLOPS > 0, "\(m.slug)")
            #expect(GPUCatalogue.slug(for: m.slug) == m.slug, "a slug is its own normal form: \(m.slug)")
        }
        #expect(GPUCatalogue.model("rtx-4090")?.vramGiB == 24)
    }
}

@Suite("GPU detection parsers")
struct DetectionParserTests {
    @Test("nvidia-smi CSV: two RTX 4090s with units")
    func twoGPUs() throws {
        let gpus = try NvidiaSMI.parse(try fixture("nvidia-smi-4090x2.csv"))
        #expect(gpus.count == 2)
        #expect(gpus.map(\.slug) == ["rtx-4090", "rtx-4090"])
        #expect(gpus[1].memoryTotalMiB == 24_564 && gpus[1].memoryFreeMiB == 1022)
        #expect(gpus[0].computeCapability == "8.9" && gpus[0].driverVersion == "550.54.14")
        #expect(gpus[0].uuid == "GPU-5c3b8a1e-8f0d-4a7e-9e55-0f5b7d1c2a01" && gpus.allSatisfy { $0.source == .nvidiaSMI })
    }

    @Test("nvidia-smi CSV: four A100s without units")
    func noUnits() throws {
        let gpus = try NvidiaSMI.parse(try fixture("nvidia-smi-a100-sxm4x4-nounits.csv"))
        #expect(gpus.map(\.index) == [0, 1, 2, 3])
        #expect(gpus.allSatisfy { $0.slug == "a100-80gb" && $0.memoryTotalMiB == 81_920 })
        #expect(gpus[3].memoryFreeMiB == 0)
    }

    @Test("nvidia-smi CSV: CRLF, blank lines, odd spacing, mixed models")
    func oddSpacing() throws {
        let gpus = try NvidiaSMI.parse(try fixture("nvidia-smi-mixed-odd-spacing.csv"))
        #expect(gpus.map(\.name) == ["Tesla T4", "NVIDIA H100 PCIe"])
        #expect(gpus.map(\.slug) == ["t4", "h100-80gb"])
        #expect(gpus.map(\.memoryTotalMiB) == [15_360, 81_559])
    }

    @Test("nvidia-smi CSV: reordered columns and [N/A] values")
    func oldDriver() throws {
        let gpus = try NvidiaSMI.parse(try fixture("nvidia-smi-old-driver.csv"))
        #expect(gpus.count == 1)
        #expect(gpus[0].slug == "v100-16gb" && gpus[0].computeCapability == nil && gpus[0].memoryFreeMiB == 16_000)
    }

    @Test("broken nvidia-smi output is an error naming the line")
    func broken() throws {
        #expect(throws: DetectionError(line: 3, "3 fields where the header has 4")) { try NvidiaSMI.parse(try fixture("nvidia-smi-broken.csv")) }
        #expect(throws: DetectionError(line: 0, "empty output")) { try NvidiaSMI.parse("\n \n") }
        #expect(throws: DetectionError.self) { try NvidiaSMI.parse("index, uuid\n0, GPU-x\n") }
        #expect(throws: DetectionError(line: 2, "memory.total 'lots' is not a size in MiB")) {
            try NvidiaSMI.parse("name, memory.total [MiB]\nNVIDIA L4, lots\n")
        }
    }

    @Test("simulated GPU specs: counts, catalogue sizes, explicit sizes, and precise errors")
    func simulated() throws {
        let gpus = try SimulatedGPUs.parse("2x rtx-4090, 1x a100-80gb,l4,1x my-gpu:20GiB")
        #expect(gpus.map(\.slug) == ["rtx-4090", "rtx-4090", "a100-80gb", "l4", "my-gpu"])
        #expect(gpus.map(\.memoryTotalMiB) == [24_576, 24_576, 81_920, 24_576, 20_480])
        #expect(gpus.map(\.index) == [0, 1, 2, 3, 4] && gpus.allSatisfy { $0.source == .simulated })
        #expect(throws: DetectionError(line: 0, "'mystery' is not a known model; give its memory, e.g. mystery:24GiB")) {
            try SimulatedGPUs.parse("1x mystery")
        }
        #expect(throws: DetectionError.self) { try SimulatedGPUs.parse("0x rtx-4090") }
        #expect(throws: DetectionError.self) { try SimulatedGPUs.parse("1x rtx-4090:lots") }
        #expect(throws: DetectionError.self) { try SimulatedGPUs.parse(" , ") }
    }

    @Test("host facts from /proc text and from this machine")
    func host() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n"
        #expect(HostFacts.cpuModel(fromCPUInfo: cpuinfo) == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz")
        #expect(HostFacts.cpuModel(fromCPUInfo: "processor : 0\nBogoMIPS : 50\n") == "unknown")
        #expect(HostFacts.memoryMiB(fromMemInfo: "MemTotal:       24596116 kB\nMemFree: 1 kB\n") == 24_019)
        let here = HostFacts.current(workDirectory: "/tmp")
        #expect(here.cpuCores >= 1 && here.ramMiB > 0 && here.diskFreeMiB > 0)
        #expect(HostFacts.diskFreeMiB(at: "/no/such/dir") == nil)
    }
}

@Suite("GPU detection: NVML, rocm-smi, fallbacks")
struct HardwareDetectionTests {
    /// Compiles the fake NVML into a shared library; nil (with the reason) where no C compiler runs.
    func fakeNVML() throws -> String? {
        let source = try #require(Bundle.module.url(forResource: "Fixtures/fake-nvml.c", withExtension: nil)).path
        let out = NSTemporaryDirectory() + "fake-nvml-\(UInt32.random(in: 0...UInt32.max)).so"
        for compiler in ["/usr/bin/cc", "/usr/bin/gcc", "/opt/swift/usr/bin/clang"] where FileManager.default.isExecutableFile(atPath: compiler) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: compiler)
            p.arguments = ["-shared", "-fPIC", "-o", out, source]
            try p.run()
            p.waitUntilExit()
            if p.terminationStatus == 0 { return out }
        }
        return nil
    }

    @Test("NVML through dlopen: names, UUIDs, memory, compute capability, driver and CUDA versions")
    func nvml() throws {
        guard let library = try fakeNVML() else {
            print("skipped: no C compiler to build the stand-in NVML library")
            return
        }
        defer { try? FileManager.default.removeItem(atPath: library) }
        let gpus = try NVML.detect(library: library)
        #expect(gpus.count == 2)
        #expect(gpus.allSatisfy { $0.slug == "h100-80gb" && $0.vendor == "nvidia" && $0.source == .nvml })
        #expect(gpus.map(\.memoryTotalMiB) == [81_559, 81_559])
        #expect(gpus.map(\.memoryFreeMiB) == [81_049, 1024])
        #expect(gpus[1].uuid == "GPU-1bb1b2c3-d4e5-f607-1829-3a4b5c6d7e81")
        #expect(gpus[0].computeCapability == "9.0" && gpus[0].driverVersion == "550.54.15" && gpus[0].cudaVersion == "12.4")
    }

    @Test("a missing NVML is a clear error, not a crash")
    func nvmlMissing() {
        #expect { try NVML.detect(library: "/nonexistent/libnvidia-ml.so.1") } throws: {
            ($0 as? DetectionError)?.message.hasPrefix("NVML is not available") == true
        }
        // A library that is not NVML lacks its entry points.
        #expect { try NVML.detect(library: "libc.so.6") } throws: { ($0 as? DetectionError)?.message == "NVML has no nvmlInit_v2" }
    }

    @Test("rocm-smi JSON: cards in order, product names, VRAM in bytes, either key case")
    func rocm() throws {
        let mi = try ROCmSMI.parse(try fixture("rocm-smi-mi300x-x2.json"))
        #expect(mi.map(\.slug) == ["mi300x", "mi300x"])
        #expect(mi.map(\.memoryTotalMiB) == [196_592, 196_592])
        #expect(mi[1].memoryFreeMiB == 196_592 - 98_304)
        #expect(mi[0].uuid == "0x18e6a5f1c2b3d4e5" && mi.allSatisfy { $0.vendor == "amd" && $0.source == .rocmSMI })
        let radeon = try ROCmSMI.parse(try fixture("rocm-smi-radeon-oldkeys.json"))
        #expect(radeon.count == 1 && radeon[0].slug == "rx-7900-xtx")
        #expect(throws: DetectionError(line: 0, "rocm-smi output is not JSON")) { try ROCmSMI.parse("ERROR: GPU[0] not found") }
        #expect(throws: DetectionError(line: 0, "card0 has no 'VRAM Total Memory (B)' figure")) {
            try ROCmSMI.parse(#"{"card0": {"Card series": "AMD Instinct MI210"}}"#)
        }
    }

    @Test("without NVML, detection runs nvidia-smi (a real process) and says what it tried")
    func fallback() throws {
        let dir = NSTemporaryDirectory() + "gm-detect-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let csv = try #require(Bundle.module.url(forResource: "Fixtures/nvidia-smi-4090x2.csv", withExtension: nil)).path
        let script = dir + "/nvidia-smi"
        try "#!/bin/sh\ncase \"$1\" in --query-gpu=*) exec cat '\(csv)';; *) exit 9;; esac\n".write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let found = GPUDetector.detect(nvmlLibrary: "/nonexistent/libnvidia-ml.so.1", searchPath: dir)
        #expect(found.gpus.map(\.slug) == ["rtx-4090", "rtx-4090"])
        #expect(found.attempts.count == 1 && found.attempts[0].hasPrefix("nvml: NVML is not available"))
        // Nothing installed at all: no GPUs, and a reason for each method.
        let none = GPUDetector.detect(nvmlLibrary: "/nonexistent/libnvidia-ml.so.1", searchPath: dir + "/empty")
        #expect(none.gpus.isEmpty)
        #expect(none.attempts.map { $0.split(separator: ":")[0] } == ["nvml", "nvidia-smi", "rocm-smi"])
        // A tool that fails is reported, not fatal.
        try "#!/bin/sh\nexit 3\n".write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let failing = GPUDetector.detect(nvmlLibrary: "/nonexistent/libnvidia-ml.so.1", searchPath: dir)
        #expect(failing.gpus.isEmpty)
        #expect(failing.attempts[1].contains("failed (status 3)"))
    }
}

import Foundation
@testable import MeshJobs
import Testing

@Suite("Container executor")
struct ContainerExecutorTests {
    @Test("docker and podman runs have no network, limits, the work directory at /work, GPUs only when asked, and a cleanup that removes the container")
    func plans() {
        let d = ContainerExecutor.plan(runtime: "docker", program: "/usr/bin/docker", name: "gpumesh-abc", image: "python:3.12", command: ["python3", "-c", "1"],
                                       environment: ["B": "2", "A": "1"], workDirectory: "/w/j", memoryMiB: 512, cpuCores: 2, gpus: 1, fileSizeBytes: 1 << 20)
        let a = d.argv.joined(separator: " ")
        #expect(d.argv.first == "/usr/bin/docker" && a.contains("run --rm --name gpumesh-abc --network none --memory 512m"))
        #expect(a.contains("--cap-drop ALL") && a.contains("--volume /w/j:/work --workdir /work") && a.contains("--gpus 1"))
        #expect(a.contains("--env A=1 --env B=2") && a.hasSuffix("-- python:3.12 python3 -c 1"))
        #expect(d.cleanup == ["/usr/bin/docker", "rm", "--force", "gpumesh-abc"])
        let p = ContainerExecutor.plan(runtime: "podman", program: "/usr/bin/podman", name: "n", image: "alpine", command: ["true"], environment: [:],
                                       workDirectory: "/w", memoryMiB: 64, cpuCores: 1, gpus: 2, fileSizeBytes: 1)
        #expect(p.argv.contains("nvidia.com/gpu=all") && !p.argv.contains("--gpus"))
        let none = ContainerExecutor.plan(runtime: "docker", program: "docker", name: "n", image: "alpine", command: ["true"], environment: [:],
                                          workDirectory: "/w", memoryMiB: 64, cpuCores: 1, gpus: 0, fileSizeBytes: 1)
        #expect(!none.argv.contains("--gpus"))
    }

    @Test("GPU device nodes are listed from a /dev-like directory: nvidia nodes and DRI render nodes only")
    func gpuDevices() throws {
        let dev = NSTemporaryDirectory() + "gm-dev-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dev + "/dri", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dev) }
        for f in ["nvidia0", "nvidiactl", "nvidia-uvm", "null", "dri/renderD128", "dri/card0"] {
            _ = FileManager.default.createFile(atPath: dev + "/" + f, contents: nil)
        }
        #expect(Sandbox.gpuDevices(dev: dev) == [dev + "/nvidia-uvm", dev + "/nvidia0", dev + "/nvidiactl", dev + "/dri/renderD128"])
    }
}

@Suite("Process trees")
struct ProcessTreeTests {
    @Test("descendants lists a process's children and grandchildren from /proc")
    func descendants() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        let marker = "\(Int.random(in: 100...999))"
        p.arguments = ["-c", "sh -c 'sleep 31.\(marker); true' & sleep 32.\(marker) & wait"]
        try p.run()
        defer { if p.isRunning { p.terminate() } }
        var found: [pid_t] = []
        for _ in 0..<200 {
            found = Sandbox.descendants(of: p.processIdentifier)
            if found.count >= 3 { break }  // the inner sh, its sleep, and the other sleep
            usleep(10_000)
        }
        #expect(found.count == 3, "\(found)")
        #expect(!found.contains(p.processIdentifier))
        for d in found { kill(d, SIGKILL) }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        #expect(Sandbox.descendants(of: p.processIdentifier).isEmpty)
    }
}

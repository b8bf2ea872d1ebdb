import ArgumentParser
import Foundation
import MeshCore
import MeshMarket
import MeshRuntime

/// Reads and validates a job file; every problem names the file, the line and the field.
func loadJobSpec(_ path: String) throws -> (spec: JobSpec, text: String, directory: String) {
    let text: String
    do { text = try String(contentsOfFile: path, encoding: .utf8) }
    catch { throw CLIError("cannot read \(path): \(error.localizedDescription)") }
    let spec: JobSpec
    do { spec = try JobSpec(toml: text) } catch { throw CLIError("\(path): \(error)") }
    let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    let directory = (absolute as NSString).deletingLastPathComponent
    for input in spec.inputs {
        let p = input.hasPrefix("/") ? input : directory + "/" + input
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: p, isDirectory: &isDir), !isDir.boolValue else {
            throw CLIError("\(path): input \(input) is not a file (looked for \(p))")
        }
    }
    return (spec, text, directory)
}

/// Decodes the node's job JSON.
func decodeJob(_ value: JSONValue?) throws -> JobInfo {
    guard let value else { throw CLIError("the node's answer has no job") }
    return try decodeAnswer(JobInfo.self, from: value)
}

func formatBytes(_ n: UInt64) -> String {
    let d = Double(n)
    if n >= 1 << 30 { return String(format: "%.2f GiB", d / Double(1 << 30)) }
    if n >= 1 << 20 { return String(format: "%.1f MiB", d / Double(1 << 20)) }
    if n >= 1 << 10 { return String(format: "%.1f KiB", d / Double(1 << 10)) }
    return "\(n) B"
}

extension GPUMesh {
    /// `gpumesh run job.toml`.
    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a job on the mesh through the running node: find a provider, negotiate, stream its logs, fetch its outputs.",
            discussion: """
            The job file (TOML, see Docs/PROTOCOL.md "Jobs") is validated before anything is sent; inputs are read
            relative to the job file. Unless the spec or --provider names one, the node searches for providers that
            match the spec's GPUs, executor and maximum price. Outputs land in OUT/<job-id>/ only once every byte has
            been verified against the provider's manifest. Ctrl-C cancels the remote job.
            Exit status: 0 when the job completed and exited 0; 1 otherwise.
            """)

        @OptionGroup var common: CommonOptions
        @Argument(help: ArgumentHelp("The job file.", valueName: "job.toml")) var job: String
        @Option(help: ArgumentHelp("A provider to use instead of searching: a contact string (gpm1:...) or a known peer ID.", valueName: "peer"))
        var provider: String?
        @Option(help: ArgumentHelp("Further providers to try when one declines, fails or disappears.", valueName: "n")) var retries = 2
        @Option(help: ArgumentHelp("Directory for outputs; each job gets <dir>/<job-id>/.", valueName: "dir")) var out = "gpumesh-out"
        @Flag(help: "Print the final job record as JSON (logs are not printed).") var json = false

        func validate() throws {
            guard (0...16).contains(retries) else { throw ValidationError("--retries must be 0 to 16") }
        }

        func run() async throws {
            bootstrapLogging(common.logLevel, default: "warning")
            let (_, text, directory) = try loadJobSpec(job)
            let outRoot = out.hasPrefix("/") ? out : FileManager.default.currentDirectoryPath + "/" + out
            do { try FileManager.default.createDirectory(atPath: outRoot, withIntermediateDirectories: true) }
            catch { throw CLIError("cannot create \(outRoot): \(error.localizedDescription)") }
            var params: [String: JSONValue] = ["spec": .string(text), "spec_dir": .string(directory), "output_root": .string(outRoot),
                                               "retries": .int(retries)]
            if let provider { params["provider"] = .string(provider) }
            let started = try await callNode(common.directory, "jobs.run", params: .object(params))
            guard let id = started["job_id"]?.stringValue else { throw CLIError("the node did not return a job ID") }
            let terminal = isatty(STDERR_FILENO) != 0 && !json
            func say(_ line: String) {
                if json { return }
                if terminal { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
                FileHandle.standardError.write(Data((line + "\n").utf8))
            }
            say("job \(id.prefix(12)) submitted")

            let interrupted = InterruptFlag()
            signal(SIGINT, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
            source.setEventHandler { interrupted.set() }
            source.resume()
            defer { source.cancel() }

            var offset = 0
            var lastState = ""
            var lastPeer: String?
            var cancelSent = false
            var info: JobInfo
            while true {
                if interrupted.isSet && !cancelSent {
                    cancelSent = true
                    say("cancelling job \(id.prefix(12))...")
                    _ = try? await callNode(common.directory, "jobs.cancel", params: .object(["id": .string(id)]))
                }
                let shown = try await callNode(common.directory, "jobs.show", params: .object(["id": .string(id), "log_offset": .int(offset)]))
                info = try decodeJob(shown["job"])
                if let log = shown["log"]?.stringValue, !log.isEmpty, !json {
                    if terminal { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
                    FileHandle.standardOutput.write(Data(log.utf8))
                }
                offset = shown["log_next"]?.intValue ?? offset
                if info.state != lastState || info.peer != lastPeer {
                    switch info.state {
                    case "finding": say("finding a provider...")
                    case "negotiating": say("negotiating with \(info.peer.map { String($0.prefix(12)) } ?? "?") (attempt \(info.attempts))")
                    case "running": say("running on \(info.peer.map { String($0.prefix(12)) } ?? "?")")
                    default: break
                    }
                    lastState = info.state
                    lastPeer = info.peer
                }
                if terminal {
                    if info.state == "sending-inputs", info.inputBytes > 0 {
                        FileHandle.standardError.write(Data("\r\u{1B}[Ksending inputs \(formatBytes(info.inputBytesDone)) / \(formatBytes(info.inputBytes))".utf8))
                    } else if info.state == "receiving-outputs", info.outputBytes > 0 {
                        FileHandle.standardError.write(Data("\r\u{1B}[Kreceiving outputs \(formatBytes(info.outputBytesDone)) / \(formatBytes(info.outputBytes))".utf8))
                    }
                }
                if info.isFinished { break }
                try await Task.sleep(for: .milliseconds(200))
            }
            if json {
                try printJSON(info)
            } else if info.state == "completed" {
                say("job \(id.prefix(12)) completed on \(info.peer.map { String($0.prefix(12)) } ?? "?"): exit status \(info.exitStatus ?? 0)"
                    + (info.timedOut == true ? " (killed at its time limit)" : "") + String(format: ", %.2f s", info.wallSeconds ?? 0))
                let outputs = info.outputs ?? []
                say("outputs: \(outputs.count) file\(outputs.count == 1 ? "" : "s") in \(info.outputDirectory ?? "?")")
                for o in outputs.prefix(20) { say("  \(o)") }
                if outputs.count > 20 { say("  ... and \(outputs.count - 20) more") }
                say("receipt \(info.receipt ?? "?") co-signed; charge \(info.charge ?? "0") points")
            }
            if info.state != "completed" {
                var why = info.failure ?? "no reason given"
                if why.hasPrefix(info.state + ": ") { why.removeFirst(info.state.count + 2) }
                if interrupted.isSet {
                    FileHandle.standardError.write(Data("job \(id.prefix(12)) \(info.state): \(why)\n".utf8))
                    throw ExitCode(130)
                }
                throw CLIError("job \(id.prefix(12)) \(info.state): \(why)")
            }
            if info.exitStatus != 0 { throw ExitCode(1) }
        }
    }

    /// `gpumesh jobs`.
    struct Jobs: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List this peer's jobs, as renter and as provider, newest first.")

        @OptionGroup var common: CommonOptions
        @Option(help: ArgumentHelp("Most jobs shown.", valueName: "n")) var limit = 50
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            bootstrapLogging(common.logLevel, default: "warning")
            let answer = try await callNode(common.directory, "jobs.list")
            let infos = try decodeAnswer([JobInfo].self, from: answer)
            let shown = Array(infos.prefix(max(0, limit)))
            if json { try printJSON(shown); return }
            guard !shown.isEmpty else { print("no jobs yet"); return }
            print(column("JOB", 14) + column("ROLE", 10) + column("STATE", 19) + column("NAME", 18) + column("PEER", 14) + column("EXIT", 6) + "CHARGE")
            for j in shown {
                print(column(String(j.id.prefix(12)), 14) + column(j.role, 10) + column(j.state, 19) + column(String(j.name.prefix(16)), 18)
                      + column(j.peer.map { String($0.prefix(12)) } ?? "-", 14) + column(j.exitStatus.map { "\($0)" } ?? "-", 6) + (j.charge ?? "-"))
            }
        }
    }

    /// `gpumesh job logs|cancel|show ID`.
    struct Job: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Look at or cancel one job.", subcommands: [Logs.self, Cancel.self, Show.self])

        struct Logs: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Print a job's output (stdout and stderr as they arrived).")
            @OptionGroup var common: CommonOptions
            @Argument(help: ArgumentHelp("The job ID (at least 4 leading hex digits).", valueName: "id")) var id: String
            @Flag(help: "Keep printing until the job ends.") var follow = false

            func run() async throws {
                bootstrapLogging(common.logLevel, default: "warning")
                var offset = 0
                while true {
                    let shown = try await callNode(common.directory, "jobs.show", params: .object(["id": .string(id), "log_offset": .int(offset)]))
                    if let log = shown["log"]?.stringValue, !log.isEmpty { FileHandle.standardOutput.write(Data(log.utf8)) }
                    let next = shown["log_next"]?.intValue ?? offset
                    let info = try decodeJob(shown["job"])
                    if next > offset { offset = next; continue }  // more than one page
                    if !follow || info.isFinished { return }
                    try await Task.sleep(for: .milliseconds(250))
                }
            }
        }

        struct Cancel: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Cancel a job (as renter: the provider kills it; as provider: the renter is told).")
            @OptionGroup var common: CommonOptions
            @Argument(help: ArgumentHelp("The job ID (at least 4 leading hex digits).", valueName: "id")) var id: String

            func run() async throws {
                bootstrapLogging(common.logLevel, default: "warning")
                let info = try decodeJob(try await callNode(common.directory, "jobs.cancel", params: .object(["id": .string(id)])))
                print("job \(info.id.prefix(12)): \(info.state)")
            }
        }

        struct Show: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Show one job's record.")
            @OptionGroup var common: CommonOptions
            @Argument(help: ArgumentHelp("The job ID (at least 4 leading hex digits).", valueName: "id")) var id: String
            @Flag(help: "Print JSON.") var json = false

            func run() async throws {
                bootstrapLogging(common.logLevel, default: "warning")
                let shown = try await callNode(common.directory, "jobs.show", params: .object(["id": .string(id), "log_offset": .int(Int.max / 2)]))
                let info = try decodeJob(shown["job"])
                if json { try printJSON(info); return }
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
                print(String(decoding: try encoder.encode(info), as: UTF8.self))
            }
        }
    }
}

/// Set from a signal handler's queue, read by the polling loop.
final class InterruptFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}

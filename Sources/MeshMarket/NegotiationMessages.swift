import MeshCore
import MeshCrypto

/// The job protocol spoken over a `gpumesh/jobs/1` secure channel (Docs/PROTOCOL.md, "Jobs"):
/// its messages, the signed quote, accept and receipt, and (in `NegotiationSessions.swift`) the
/// pure state machines that drive both sides.
public enum Negotiation {
    /// Bytes of input or output a chunk carries at most.
    public static let maxChunkBytes = 1 << 20
    /// Bytes in every chunk but a file's last (the file hash's chunk size).
    public static let chunkBytes = FileHash.chunkBytes
    /// Bytes of one log message at most.
    public static let maxLogBytes = 64 << 10
    /// Bytes of a free-text note at most (declines, cancels, finish).
    public static let maxNoteBytes = 512
    /// A job ID's length in bytes (random, chosen by the renter).
    public static let jobIDBytes = 16

    /// Why a request was declined or a job stopped (one byte on the wire).
    public enum Reason: UInt8, Sendable, CaseIterable, CustomStringConvertible {
        /// The renter's maximum price is below the provider's price.
        case price = 1
        /// The provider does not offer the executor.
        case executor = 2
        /// The provider lacks the GPUs, VRAM, cores or memory asked for.
        case resources = 3
        /// The renter is not on the provider's allow-list.
        case notAllowed = 4
        /// No free slot.
        case busy = 5
        /// The container image is not allowed.
        case image = 6
        /// Over the provider's limits (time, input or output size).
        case limits = 7
        /// A malformed or invalid request.
        case badRequest = 8
        /// A quote expired before it was accepted.
        case expired = 9
        /// Cancelled by one side.
        case cancelled = 10
        /// A step took longer than its timeout.
        case timeout = 11
        /// The provider could not run the job (executor failure, disk).
        case failed = 12
        /// A message out of order, malformed, or failing verification.
        case protocolError = 13
        /// The channel closed before the job was done.
        case disconnected = 14

        /// The reason's name in text and JSON.
        public var description: String {
            switch self {
            case .price: "price"
            case .executor: "executor"
            case .resources: "resources"
            case .notAllowed: "not-allowed"
            case .busy: "busy"
            case .image: "image"
            case .limits: "limits"
            case .badRequest: "bad-request"
            case .expired: "expired"
            case .cancelled: "cancelled"
            case .timeout: "timeout"
            case .failed: "failed"
            case .protocolError: "protocol-error"
            case .disconnected: "disconnected"
            }
        }
    }

    /// One file of an input or output manifest; `hash` is its `FileHash` (chunk hashes over 256 KiB chunks).
    public struct FileEntry: Sendable, Equatable, Hashable {
        /// A relative path with `/` separators (inputs: a base name).
        public var name: String
        /// Size in bytes.
        public var size: UInt64
        /// The content's `FileHash`.
        public var hash: [UInt8]

        /// An entry.
        public init(name: String, size: UInt64, hash: [UInt8]) {
            self.name = name
            self.size = size
            self.hash = hash
        }

        /// True for a path that stays inside the directory it is relative to: not empty, not
        /// absolute, no `.`/`..`/empty components, no NUL or backslash, at most 1,024 bytes.
        public static func isSafeRelativePath(_ path: String) -> Bool {
            guard !path.isEmpty, path.utf8.count <= 1024, !path.hasPrefix("/"), !path.contains("\0"), !path.contains("\\") else { return false }
            return path.split(separator: "/", omittingEmptySubsequences: false).allSatisfy { $0 != "" && $0 != "." && $0 != ".." }
        }
    }

    /// Most files in a manifest.
    public static let maxManifestFiles = 10_000

    /// A manifest's wire form: `count (2) | (path s16, size (8), hash (32))...`.
    public static func encodeManifest(_ files: [FileEntry]) -> [UInt8] {
        var w = WireWriter(capacity: 2 + files.count * 60)
        encodeManifest(files, into: &w)
        return w.bytes
    }

    static func encodeManifest(_ files: [FileEntry], into w: inout WireWriter) {
        w.u16(UInt16(files.count))
        for f in files {
            w.blob16(Array(f.name.utf8))
            w.u64(f.size)
            w.raw(f.hash)
        }
    }

    static func decodeManifest(_ r: inout WireReader) -> [FileEntry]? {
        guard let n = r.u16(), Int(n) <= maxManifestFiles else { return nil }
        var files: [FileEntry] = []
        var names = Set<String>()
        for _ in 0..<n {
            guard let raw = r.blob16(max: 1024), let name = String(validating: raw, as: UTF8.self), FileEntry.isSafeRelativePath(name),
                  let size = r.u64(), let hash = r.raw(32), names.insert(name).inserted else { return nil }
            files.append(FileEntry(name: name, size: size, hash: hash))
        }
        return files
    }

    /// BLAKE2b-256 of a manifest's wire form: what quotes and receipts name.
    public static func digest(_ files: [FileEntry]) -> [UInt8] { Blake2b.hash(encodeManifest(files), outputLength: 32) }

    /// BLAKE2b-128 of a chunk's data, carried with it (`FileHash.chunk`).
    public static func chunkHash(_ data: some ContiguousBytes) -> [UInt8] { FileHash.chunk(data) }

    // MARK: Signed statements

    /// Signature contexts: every signed statement is domain-separated.
    enum Context {
        static let quote = Array("gpumesh/quote/v1".utf8)
        static let accept = Array("gpumesh/accept/v1".utf8)
        static let receiptProvider = Array("gpumesh/receipt/provider/v1".utf8)
        static let receiptRenter = Array("gpumesh/receipt/renter/v1".utf8)
    }

    /// A provider's signed offer to run one job at a price until a deadline.
    /// Body: `version (1) = 1 | job_id (16) | provider (32) | renter (32) | spec_digest (32) |
    /// inputs_digest (32) | price_millipoints (4) | valid_until_ms (8)`.
    public struct Quote: Sendable, Equatable {
        /// The job this quote is for.
        public var jobID: [UInt8]
        /// The provider's signing key.
        public var provider: PublicKey
        /// The renter's signing key.
        public var renter: PublicKey
        /// `JobSpec.digest` of the spec quoted.
        public var specDigest: [UInt8]
        /// Digest of the input manifest quoted.
        public var inputsDigest: [UInt8]
        /// Price per GPU-hour.
        public var price: Price
        /// Unix milliseconds after which an accept is refused.
        public var validUntil: UInt64
        /// The provider's signature over `body`.
        public var signature: [UInt8] = []

        /// A quote to sign.
        public init(jobID: [UInt8], provider: PublicKey, renter: PublicKey, specDigest: [UInt8], inputsDigest: [UInt8], price: Price, validUntil: UInt64) {
            self.jobID = jobID
            self.provider = provider
            self.renter = renter
            self.specDigest = specDigest
            self.inputsDigest = inputsDigest
            self.price = price
            self.validUntil = validUntil
        }

        /// The signed bytes.
        public var body: [UInt8] {
            var w = WireWriter(capacity: 160)
            w.u8(1); w.raw(jobID); w.raw(provider.bytes); w.raw(renter.bytes); w.raw(specDigest); w.raw(inputsDigest)
            w.u32(price.millipoints); w.u64(validUntil)
            return w.bytes
        }

        /// The quote signed by `key` (which must be the provider's).
        public func signed(by key: SigningKey) -> Quote {
            var q = self
            q.signature = key.signature(for: Context.quote + body)
            return q
        }

        /// True if the provider's signature verifies.
        public var isValid: Bool { provider.isValidSignature(signature, for: Context.quote + body) }

        /// BLAKE2b-256 of the body: what the accept names.
        public var digest: [UInt8] { Blake2b.hash(body, outputLength: 32) }

        init?(body bytes: [UInt8], signature: [UInt8]) {
            var r = WireReader(bytes)
            guard r.u8() == 1, let id = r.raw(jobIDBytes), let p = r.raw(32).flatMap({ try? PublicKey(bytes: $0) }),
                  let renter = r.raw(32).flatMap({ try? PublicKey(bytes: $0) }), let spec = r.raw(32), let inputs = r.raw(32),
                  let price = r.u32(), let valid = r.u64(), r.isAtEnd else { return nil }
            self.init(jobID: id, provider: p, renter: renter, specDigest: spec, inputsDigest: inputs, price: Price(millipoints: price), validUntil: valid)
            self.signature = signature
        }
    }

    /// What happened, signed by the provider and countersigned by the renter. Body:
    /// `version (1) = 1 | job_id (16) | provider (32) | renter (32) | spec_digest (32) |
    /// inputs_digest (32) | outputs_digest (32) | price_millipoints (4) | gpus (1) | gpu_model (s8) |
    /// started_ms (8) | wall_ms (8) | gpu_ms (8) | charge_millipoints (8) | exit_status (4) | flags (1)`;
    /// flags: 1 signalled, 2 timed out. Wire form of a whole receipt: `body (s16) | provider
    /// signature (64) | renter signature (64)`.
    public struct Receipt: Sendable, Equatable, Hashable {
        /// The job.
        public var jobID: [UInt8]
        /// Who ran it.
        public var provider: PublicKey
        /// Who rented.
        public var renter: PublicKey
        /// `JobSpec.digest` of what ran.
        public var specDigest: [UInt8]
        /// Digest of the input manifest.
        public var inputsDigest: [UInt8]
        /// Digest of the output manifest.
        public var outputsDigest: [UInt8]
        /// Price per GPU-hour agreed in the quote.
        public var price: Price
        /// GPUs the job held.
        public var gpus: Int
        /// The provider's GPU model slug (empty for none).
        public var gpuModel: String
        /// Unix milliseconds the job started.
        public var startedAt: UInt64
        /// Wall time, milliseconds.
        public var wallMilliseconds: UInt64
        /// GPU time, milliseconds (GPUs x wall time).
        public var gpuMilliseconds: UInt64
        /// What the renter owes, millipoints: `ceil(price x gpu_ms / 3,600,000)`.
        public var charge: UInt64
        /// The job's exit status (or signal number when signalled).
        public var exitStatus: Int32
        /// Killed by a signal.
        public var signaled: Bool
        /// Killed at its time limit.
        public var timedOut: Bool
        /// The provider's signature over the body.
        public var providerSignature: [UInt8] = []
        /// The renter's countersignature over the body.
        public var renterSignature: [UInt8] = []

        /// GPU time for `gpus` held for `wallMilliseconds` (saturating: untrusted numbers never trap).
        public static func gpuTime(gpus: Int, wallMilliseconds: UInt64) -> UInt64 {
            let (product, overflow) = UInt64(max(0, gpus)).multipliedReportingOverflow(by: wallMilliseconds)
            return overflow ? UInt64.max : product
        }

        /// The charge for `gpuMilliseconds` at `price`, rounded up to a whole millipoint.
        public static func charge(price: Price, gpuMilliseconds: UInt64) -> UInt64 {
            let (product, overflow) = UInt64(price.millipoints).multipliedReportingOverflow(by: gpuMilliseconds)
            if overflow { return UInt64.max }
            return product / 3_600_000 + (product % 3_600_000 == 0 ? 0 : 1)
        }

        /// A receipt to sign.
        public init(jobID: [UInt8], provider: PublicKey, renter: PublicKey, specDigest: [UInt8], inputsDigest: [UInt8], outputsDigest: [UInt8],
                    price: Price, gpus: Int, gpuModel: String, startedAt: UInt64, wallMilliseconds: UInt64, exitStatus: Int32,
                    signaled: Bool, timedOut: Bool) {
            self.jobID = jobID
            self.provider = provider
            self.renter = renter
            self.specDigest = specDigest
            self.inputsDigest = inputsDigest
            self.outputsDigest = outputsDigest
            self.price = price
            self.gpus = gpus
            self.gpuModel = gpuModel
            self.startedAt = startedAt
            self.wallMilliseconds = wallMilliseconds
            self.gpuMilliseconds = Self.gpuTime(gpus: gpus, wallMilliseconds: wallMilliseconds)
            self.charge = Self.charge(price: price, gpuMilliseconds: gpuMilliseconds)
            self.exitStatus = exitStatus
            self.signaled = signaled
            self.timedOut = timedOut
        }

        /// The signed bytes.
        public var body: [UInt8] {
            var w = WireWriter(capacity: 256)
            w.u8(1); w.raw(jobID); w.raw(provider.bytes); w.raw(renter.bytes); w.raw(specDigest); w.raw(inputsDigest); w.raw(outputsDigest)
            w.u32(price.millipoints); w.u8(UInt8(gpus)); w.string8(gpuModel)
            w.u64(startedAt); w.u64(wallMilliseconds); w.u64(gpuMilliseconds); w.u64(charge)
            w.u32(UInt32(bitPattern: exitStatus)); w.u8((signaled ? 1 : 0) | (timedOut ? 2 : 0))
            return w.bytes
        }

        /// BLAKE2b-256 of the body: the receipt's identity.
        public var id: [UInt8] { Blake2b.hash(body, outputLength: 32) }

        /// The whole receipt's wire form.
        public var encoded: [UInt8] {
            var w = WireWriter(capacity: 400)
            w.blob16(body); w.raw(providerSignature); w.raw(renterSignature)
            return w.bytes
        }

        /// Signs as the provider.
        public mutating func signAsProvider(_ key: SigningKey) { providerSignature = key.signature(for: Context.receiptProvider + body) }
        /// Countersigns as the renter.
        public mutating func signAsRenter(_ key: SigningKey) { renterSignature = key.signature(for: Context.receiptRenter + body) }

        /// True if the provider's signature verifies.
        public var providerSignatureValid: Bool { provider.isValidSignature(providerSignature, for: Context.receiptProvider + body) }
        /// True if the renter's signature verifies.
        public var renterSignatureValid: Bool { renter.isValidSignature(renterSignature, for: Context.receiptRenter + body) }
        /// The signed body if both signatures verify and the charge follows from price and GPU
        /// time (the body is encoded once), else nil.
        public var verifiedBody: [UInt8]? {
            guard gpuMilliseconds == Self.gpuTime(gpus: gpus, wallMilliseconds: wallMilliseconds),
                  charge == Self.charge(price: price, gpuMilliseconds: gpuMilliseconds) else { return nil }
            let b = body
            guard provider.isValidSignature(providerSignature, for: Context.receiptProvider + b),
                  renter.isValidSignature(renterSignature, for: Context.receiptRenter + b) else { return nil }
            return b
        }

        /// True if both signatures verify and the charge follows from price and GPU time.
        public var isValid: Bool {
            providerSignatureValid && renterSignatureValid && gpuMilliseconds == Self.gpuTime(gpus: gpus, wallMilliseconds: wallMilliseconds)
                && charge == Self.charge(price: price, gpuMilliseconds: gpuMilliseconds)
        }

        /// Parses a whole receipt (signatures are not checked: see `isValid`).
        public init?(decoding bytes: [UInt8]) {
            var r = WireReader(bytes)
            guard let body = r.blob16(max: 1024), let ps = r.raw(64), let rs = r.raw(64), r.isAtEnd,
                  var receipt = Receipt(body: body) else { return nil }
            receipt.providerSignature = ps
            receipt.renterSignature = rs
            self = receipt
        }

        init?(body bytes: [UInt8]) {
            var r = WireReader(bytes)
            guard r.u8() == 1, let id = r.raw(jobIDBytes), let p = r.raw(32).flatMap({ try? PublicKey(bytes: $0) }),
                  let renter = r.raw(32).flatMap({ try? PublicKey(bytes: $0) }), let spec = r.raw(32), let inputs = r.raw(32),
                  let outputs = r.raw(32), let price = r.u32(), let gpus = r.u8(), let model = r.string8(), let started = r.u64(),
                  let wall = r.u64(), let gpuMs = r.u64(), let charge = r.u64(), let status = r.u32(), let flags = r.u8(), flags <= 3,
                  r.isAtEnd else { return nil }
            self.init(jobID: id, provider: p, renter: renter, specDigest: spec, inputsDigest: inputs, outputsDigest: outputs,
                      price: Price(millipoints: price), gpus: Int(gpus), gpuModel: model, startedAt: started, wallMilliseconds: wall,
                      exitStatus: Int32(bitPattern: status), signaled: flags & 1 != 0, timedOut: flags & 2 != 0)
            // Keep the signed numbers as sent; `isValid` checks that they follow from price and time.
            gpuMilliseconds = gpuMs
            self.charge = charge
            guard body == bytes else { return nil }  // only the canonical encoding is accepted
        }

    }

    // MARK: Messages

    /// Everything either side sends, one per channel message: `type (1) | fields`.
    public enum Message: Sendable, Equatable {
        /// 1, renter: `version (1) = 1 | job_id (16) | spec (u32 length + JobSpec canonical bytes) | input manifest`.
        case request(jobID: [UInt8], spec: [UInt8], inputs: [FileEntry])
        /// 2, provider: `quote body (s16) | signature (64)`.
        case quote(Quote)
        /// 3, provider: `job_id (16) | reason (1) | note (s16)`.
        case decline(jobID: [UInt8], reason: Reason, note: String)
        /// 4, renter: `job_id (16) | quote_digest (32) | signature (64)` over `"gpumesh/accept/v1" | quote_digest`.
        case accept(jobID: [UInt8], quoteDigest: [UInt8], signature: [UInt8])
        /// 5, renter (inputs) or provider (outputs): `file (2) | offset (8) | hash (16) | data (u32 length + bytes)`.
        case chunk(file: UInt16, offset: UInt64, hash: [UInt8], data: ArraySlice<UInt8>)
        /// 6, provider: the job started: `started_ms (8)`.
        case started(at: UInt64)
        /// 7, provider: output: `stream (1: stdout, 2: stderr) | data (u32 length + bytes)`.
        case log(stream: UInt8, data: [UInt8])
        /// 8, provider: `exit_status (4) | flags (1) | wall_ms (8) | gpu_ms (8) | output manifest | note (s16)`.
        case finish(Finish)
        /// 9, provider: `receipt body (s16) | provider signature (64)`.
        case receipt(body: [UInt8], signature: [UInt8])
        /// 10, renter: `renter signature (64)`.
        case countersign(signature: [UInt8])
        /// 11, either: `reason (1) | note (s16)`.
        case cancel(reason: Reason, note: String)

        /// The wire form.
        public var encoded: [UInt8] {
            var w = WireWriter(capacity: 64)
            func note(_ s: String) { w.blob16(Array(Negotiation.clip(s).utf8)) }
            switch self {
            case .request(let id, let spec, let inputs):
                w.u8(1); w.u8(1); w.raw(id); w.u32(UInt32(spec.count)); w.raw(spec); encodeManifest(inputs, into: &w)
            case .quote(let q):
                w.u8(2); w.blob16(q.body); w.raw(q.signature)
            case .decline(let id, let reason, let text):
                w.u8(3); w.raw(id); w.u8(reason.rawValue); note(text)
            case .accept(let id, let digest, let signature):
                w.u8(4); w.raw(id); w.raw(digest); w.raw(signature)
            case .chunk(let file, let offset, let hash, let data):
                w = WireWriter(capacity: data.count + 40)
                w.u8(5); w.u16(file); w.u64(offset); w.raw(hash); w.u32(UInt32(data.count)); w.raw(data)
            case .started(let at):
                w.u8(6); w.u64(at)
            case .log(let stream, let data):
                w.u8(7); w.u8(stream); w.u32(UInt32(data.count)); w.raw(data)
            case .finish(let f):
                w.u8(8); w.u32(UInt32(bitPattern: f.exitStatus)); w.u8((f.signaled ? 1 : 0) | (f.timedOut ? 2 : 0))
                w.u64(f.wallMilliseconds); w.u64(f.gpuMilliseconds); encodeManifest(f.outputs, into: &w); note(f.note)
            case .receipt(let body, let signature):
                w.u8(9); w.blob16(body); w.raw(signature)
            case .countersign(let signature):
                w.u8(10); w.raw(signature)
            case .cancel(let reason, let text):
                w.u8(11); w.u8(reason.rawValue); note(text)
            }
            return w.bytes
        }

        /// The wire form of `.chunk(file:offset:hash:data:)` built in one buffer: `fill` writes the
        /// `count` data bytes straight into it (read from a file, say) and says how many it wrote;
        /// `hash` is the chunk hash, or nil to compute it from the bytes written. Returns nil if
        /// `fill` wrote fewer than `count`.
        public static func encodedChunk<E: Error>(file: UInt16, offset: UInt64, hash: [UInt8]?, count: Int,
                                                  fill: (UnsafeMutableRawBufferPointer) throws(E) -> Int) throws(E) -> [UInt8]? {
            let header = 1 + 2 + 8 + FileHash.chunkHashBytes + 4
            var failure: E?
            var written = 0
            // Filled in place: the data bytes go straight from `fill` into the message, then the
            // header (with the hash, computed from them if not given) goes in front.
            let out = [UInt8](unsafeUninitializedCapacity: header + count) { buffer, initialized in
                let raw = UnsafeMutableRawBufferPointer(buffer)
                let data = UnsafeMutableRawBufferPointer(rebasing: raw[header...])
                do throws(E) { written = try fill(data) } catch { failure = error }
                var w = WireWriter(capacity: header)
                w.u8(5); w.u16(file); w.u64(offset)
                w.raw(failure == nil && written == count ? hash ?? chunkHash(UnsafeRawBufferPointer(data)) : [UInt8](repeating: 0, count: FileHash.chunkHashBytes))
                w.u32(UInt32(count))
                _ = w.bytes.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: raw[..<header]).initializeMemory(as: UInt8.self, from: $0.bindMemory(to: UInt8.self)) }
                initialized = header + count  // bytes: a short fill leaves junk, and the result is dropped
            }
            if let failure { throw failure }
            return written == count ? out : nil
        }

        /// Parses untrusted bytes; nil if malformed.
        public init?(decoding bytes: [UInt8]) {
            var r = WireReader(bytes)
            func note() -> String? { r.blob16(max: maxNoteBytes).flatMap { String(validating: $0, as: UTF8.self) } }
            func blob32(max: Int) -> [UInt8]? {
                guard let n = r.u32(), Int(n) <= max else { return nil }
                return r.raw(Int(n))
            }
            guard let type = r.u8() else { return nil }
            switch type {
            case 1:
                guard r.u8() == 1, let id = r.raw(jobIDBytes), let spec = blob32(max: JobSpec.Limits.maxEncodedBytes),
                      let inputs = decodeManifest(&r) else { return nil }
                self = .request(jobID: id, spec: spec, inputs: inputs)
            case 2:
                guard let body = r.blob16(max: 512), let sig = r.raw(64), let q = Quote(body: body, signature: sig) else { return nil }
                self = .quote(q)
            case 3:
                guard let id = r.raw(jobIDBytes), let reason = r.u8().flatMap(Reason.init(rawValue:)), let text = note() else { return nil }
                self = .decline(jobID: id, reason: reason, note: text)
            case 4:
                guard let id = r.raw(jobIDBytes), let digest = r.raw(32), let sig = r.raw(64) else { return nil }
                self = .accept(jobID: id, quoteDigest: digest, signature: sig)
            case 5:
                // The data shares the message's buffer: a chunk is not copied again on its way to disk.
                guard let file = r.u16(), let offset = r.u64(), let hash = r.raw(16), let n = r.u32(), Int(n) <= maxChunkBytes,
                      let data = r.slice(Int(n)) else { return nil }
                self = .chunk(file: file, offset: offset, hash: hash, data: data)
            case 6:
                guard let at = r.u64() else { return nil }
                self = .started(at: at)
            case 7:
                guard let stream = r.u8(), stream == 1 || stream == 2, let data = blob32(max: maxLogBytes) else { return nil }
                self = .log(stream: stream, data: data)
            case 8:
                guard let status = r.u32(), let flags = r.u8(), flags <= 3, let wall = r.u64(), let gpu = r.u64(),
                      let outputs = decodeManifest(&r), let text = note() else { return nil }
                self = .finish(Finish(exitStatus: Int32(bitPattern: status), signaled: flags & 1 != 0, timedOut: flags & 2 != 0,
                                      wallMilliseconds: wall, gpuMilliseconds: gpu, outputs: outputs, note: text))
            case 9:
                guard let body = r.blob16(max: 1024), let sig = r.raw(64) else { return nil }
                self = .receipt(body: body, signature: sig)
            case 10:
                guard let sig = r.raw(64) else { return nil }
                self = .countersign(signature: sig)
            case 11:
                guard let reason = r.u8().flatMap(Reason.init(rawValue:)), let text = note() else { return nil }
                self = .cancel(reason: reason, note: text)
            default:
                return nil
            }
            guard r.isAtEnd else { return nil }
        }
    }

    /// How a job ended on the provider, as the finish message reports it.
    public struct Finish: Sendable, Equatable {
        /// Exit status, or the signal number when signalled.
        public var exitStatus: Int32
        /// Killed by a signal.
        public var signaled: Bool
        /// Killed at its time limit.
        public var timedOut: Bool
        /// Wall time, milliseconds.
        public var wallMilliseconds: UInt64
        /// GPU time, milliseconds.
        public var gpuMilliseconds: UInt64
        /// The outputs that follow, in order.
        public var outputs: [FileEntry]
        /// A remark (e.g. why outputs were left out).
        public var note: String

        /// A finish report.
        public init(exitStatus: Int32, signaled: Bool, timedOut: Bool, wallMilliseconds: UInt64, gpuMilliseconds: UInt64, outputs: [FileEntry], note: String = "") {
            self.exitStatus = exitStatus
            self.signaled = signaled
            self.timedOut = timedOut
            self.wallMilliseconds = wallMilliseconds
            self.gpuMilliseconds = gpuMilliseconds
            self.outputs = outputs
            self.note = note
        }
    }

    /// `text` cut to at most `maxNoteBytes` bytes at a character boundary.
    static func clip(_ text: String) -> String {
        guard text.utf8.count > maxNoteBytes else { return text }
        var out = ""
        for c in text {
            if out.utf8.count + String(c).utf8.count > maxNoteBytes { break }
            out.append(c)
        }
        return out
    }
}

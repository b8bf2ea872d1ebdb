import Foundation
@testable import MeshCrypto
import Testing

@Suite("Hashing and signatures")
struct PrimitiveTests {
    @Test("BLAKE2b matches published known answers, one-shot and incremental")
    func blake2bKnownAnswers() {
        // RFC 7693 Appendix A (BLAKE2b-512 of "abc") and the empty-input BLAKE2b-256 digest.
        #expect(Hex.encode(Blake2b.hash(Array("abc".utf8), outputLength: 64)) ==
                "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d17d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923")
        #expect(Hex.encode(Blake2b.hash([UInt8]())) == "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8")
        let data = SecureRandom.bytes(100_000)
        let h = Blake2b.Hasher()
        for piece in stride(from: 0, to: data.count, by: 7_777) { h.update(data[piece..<min(piece + 7_777, data.count)]) }
        #expect(h.finalize() == Blake2b.hash(data))
        #expect(Blake2b.hash(data, key: [UInt8](repeating: 1, count: 32)) != Blake2b.hash(data))
    }

    @Test("Ed25519 reproduces RFC 8032 test 1 and rejects tampering")
    func ed25519() throws {
        let seed = SecretBytes(copying: Hex.decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")!)
        let key = try SigningKey(seed: seed)
        #expect(Hex.encode(key.publicKey.bytes) == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        let sig = key.signature(for: [UInt8]())
        #expect(Hex.encode(sig) == "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
        #expect(key.publicKey.isValidSignature(sig, for: [UInt8]()))

        let message = Array("capability record".utf8)
        let s2 = key.signature(for: message)
        #expect(key.publicKey.isValidSignature(s2, for: message))
        var tampered = message; tampered[0] ^= 1
        #expect(!key.publicKey.isValidSignature(s2, for: tampered))
        var badSig = s2; badSig[10] ^= 0x80
        #expect(!key.publicKey.isValidSignature(badSig, for: message))
        #expect(!SigningKey().publicKey.isValidSignature(s2, for: message))
        #expect(!key.publicKey.isValidSignature(Array(s2.prefix(63)), for: message))
        #expect(throws: CryptoError.self) { try PublicKey(bytes: [UInt8](repeating: 0, count: 31)) }
        #expect(throws: CryptoError.self) { try SigningKey(seed: SecretBytes(count: 16)) }
    }

    @Test("secrets can be wiped; comparisons and hex behave")
    func secretsAndHex() {
        let s = SecretBytes(copying: [UInt8](repeating: 0xaa, count: 32))
        #expect(s.withUnsafeBytes { Array($0) } == [UInt8](repeating: 0xaa, count: 32))
        s.wipe()
        #expect(s.withUnsafeBytes { Array($0) } == [UInt8](repeating: 0, count: 32))
        #expect(SecretBytes(count: 0).count == 0)
        var transient: [UInt8] = [1, 2, 3]
        wipe(&transient)
        #expect(transient == [0, 0, 0])

        #expect(constantTimeEquals([1, 2, 3] as [UInt8], [1, 2, 3] as [UInt8]))
        #expect(!constantTimeEquals([1, 2, 3] as [UInt8], [1, 2, 4] as [UInt8]))
        #expect(!constantTimeEquals([1, 2, 3] as [UInt8], [1, 2] as [UInt8]))
        #expect(Hex.decode("00ffAb") == [0, 255, 0xab])
        #expect(Hex.decode("abc") == nil)
        #expect(Hex.decode("zz") == nil)
        #expect(SecureRandom.bytes(32) != SecureRandom.bytes(32))
    }
}

@Suite("Key file")
struct KeyFileTests {
    private func tempPath() throws -> String {
        let dir = NSTemporaryDirectory() + "gm-key-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir + "/identity.key"
    }

    @Test("a saved key loads back identical, with mode 0600 whatever the umask")
    func roundTrip() throws {
        let path = try tempPath()
        let old = umask(0)  // the most permissive umask: the file must still be 0600
        defer { umask(old) }
        let key = SigningKey()
        try KeyFile.write(key, to: path)
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as! Int
        #expect(mode == 0o600)
        let loaded = try KeyFile.read(from: path)
        #expect(loaded.publicKey == key.publicKey)
        let message = Array("hello".utf8)
        #expect(key.publicKey.isValidSignature(loaded.signature(for: message), for: message))
    }

    @Test("an existing key is never overwritten")
    func refusesOverwrite() throws {
        let path = try tempPath()
        let key = SigningKey()
        try KeyFile.write(key, to: path)
        #expect(throws: KeyFile.Failure.exists(path: path)) { try KeyFile.write(SigningKey(), to: path) }
        #expect(try KeyFile.read(from: path).publicKey == key.publicKey)
    }

    @Test("a key file that group or others can read is refused with a clear error", arguments: [0o644, 0o640, 0o604, 0o660, 0o700 | 0o007])
    func refusesInsecure(mode: Int) throws {
        let path = try tempPath()
        try KeyFile.write(SigningKey(), to: path)
        chmod(path, mode_t(mode))
        do {
            _ = try KeyFile.read(from: path)
            Issue.record("mode \(String(mode, radix: 8)) was accepted")
        } catch {
            #expect(error == .insecurePermissions(path: path, mode: UInt32(mode & 0o777)))
            #expect(error.description.contains("chmod 600"))
        }
    }

    @Test("missing, truncated and foreign files give precise errors")
    func malformed() throws {
        let path = try tempPath()
        #expect(throws: KeyFile.Failure.notFound(path: path)) { try KeyFile.read(from: path) }
        _ = FileManager.default.createFile(atPath: path, contents: Data(repeating: 1, count: 10), attributes: [.posixPermissions: 0o600])
        #expect { try KeyFile.read(from: path) } throws: { ($0 as? KeyFile.Failure)?.description.contains("size is 10 bytes") == true }
        try FileManager.default.removeItem(atPath: path)
        _ = FileManager.default.createFile(atPath: path, contents: Data(repeating: 0x41, count: KeyFile.magic.count + 32),
                                       attributes: [.posixPermissions: 0o600])
        #expect { try KeyFile.read(from: path) } throws: { ($0 as? KeyFile.Failure)?.description.contains("missing header") == true }
    }
}

@Suite("Ed25519 to X25519 for key agreement")
struct FastConversionTests {
    @Test("the direct map equals libsodium's conversion for 500 random identities")
    func matchesLibsodium() throws {
        for _ in 0..<500 {
            let pk = SigningKey().publicKey
            #expect(pk.x25519ForAgreement() == (try pk.x25519()))
        }
    }

    @Test("non-canonical y and the identity point (y = 1) are refused; low-order results fail the agreement")
    func refusals() throws {
        // y = p (non-canonical encoding of 0).
        var p = [UInt8](repeating: 0xFF, count: 32)
        p[0] = 0xED
        p[31] = 0x7F
        #expect(try PublicKey(bytes: p).x25519ForAgreement() == nil)
        var one = [UInt8](repeating: 0, count: 32)
        one[0] = 1
        #expect(try PublicKey(bytes: one).x25519ForAgreement() == nil)
        // y = 0 maps to u = 1, a low-order point: the agreement refuses it.
        let zero = try PublicKey(bytes: [UInt8](repeating: 0, count: 32))
        let u = try #require(zero.x25519ForAgreement())
        #expect(u == [1] + [UInt8](repeating: 0, count: 31))
        #expect(throws: CryptoError.self) { try X25519KeyPair().sharedSecret(with: u) }
    }
}

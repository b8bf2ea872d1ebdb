import Foundation
@testable import MeshCrypto
import Testing

/// The shared Noise vectors: `../shared/vectors/noise/` beside the checkout (or `$GPUMESH_SHARED_DIR`).
enum NoiseVectors {
    static let path: String = {
        if let dir = ProcessInfo.processInfo.environment["GPUMESH_SHARED_DIR"] {
            return dir + "/vectors/noise/cacophony-25519-ChaChaPoly-BLAKE2b.json"
        }
        var root = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { root.deleteLastPathComponent() }
        return root.deletingLastPathComponent().appendingPathComponent("shared/vectors/noise/cacophony-25519-ChaChaPoly-BLAKE2b.json").path
    }()

    static var present: Bool { FileManager.default.fileExists(atPath: path) }
    /// CI always has shared/ beside the clone: there a missing file is a failure, not a skip.
    static var required: Bool { ProcessInfo.processInfo.environment["CI"] != nil }

    struct Message: Decodable { let payload: String; let ciphertext: String }
    struct Vector: Decodable {
        let protocol_name: String
        let init_prologue: String
        let init_psks: [String]?
        let init_static: String?
        let init_ephemeral: String
        let init_remote_static: String?
        let resp_prologue: String
        let resp_psks: [String]?
        let resp_static: String?
        let resp_ephemeral: String?
        let resp_remote_static: String?
        let handshake_hash: String
        let messages: [Message]
    }

    static func load() throws -> [Vector] {
        struct File: Decodable { let vectors: [Vector] }
        return try JSONDecoder().decode(File.self, from: Data(contentsOf: URL(fileURLWithPath: path))).vectors
    }
}

private func bytes(_ hex: String?) -> [UInt8]? { hex.map { Hex.decode($0)! } }
private func keyPair(_ hex: String?) throws -> X25519KeyPair? {
    try hex.map { try X25519KeyPair(secret: SecretBytes(copying: Hex.decode($0)!)) }
}

@Suite("Noise")
struct NoiseTests {
    @Test("every vector in the shared cacophony file reproduces its ciphertexts and handshake hash",
          .enabled(if: NoiseVectors.present || NoiseVectors.required, "shared Noise vectors not found at \(NoiseVectors.path)"))
    func vectors() throws {
        try #require(NoiseVectors.present, "shared Noise vectors missing at \(NoiseVectors.path)")
        let vectors = try NoiseVectors.load()
        #expect(vectors.count == 36)
        var patterns = Set<String>()
        for v in vectors {
            let initEphemeral = try keyPair(v.init_ephemeral)!
            let respEphemeral = try keyPair(v.resp_ephemeral)
            let initiator = try Noise.HandshakeState(
                protocolName: v.protocol_name, role: .initiator, prologue: bytes(v.init_prologue)!,
                localStatic: keyPair(v.init_static), remoteStatic: bytes(v.init_remote_static),
                presharedKeys: (v.init_psks ?? []).map { SecretBytes(copying: Hex.decode($0)!) }, makeEphemeral: { initEphemeral })
            let responder = try Noise.HandshakeState(
                protocolName: v.protocol_name, role: .responder, prologue: bytes(v.resp_prologue)!,
                localStatic: keyPair(v.resp_static), remoteStatic: bytes(v.resp_remote_static),
                presharedKeys: (v.resp_psks ?? []).map { SecretBytes(copying: Hex.decode($0)!) }, makeEphemeral: { respEphemeral! })
            for (i, m) in v.messages.enumerated() {
                let payload = bytes(m.payload)!
                let fromInitiator = initiator.pattern.isOneWay || i % 2 == 0
                let (sender, receiver) = fromInitiator ? (initiator, responder) : (responder, initiator)
                let ciphertext: [UInt8]
                let received: [UInt8]
                if let t = sender.transport, let r = receiver.transport {
                    ciphertext = try t.send.encrypt(ad: [], payload)
                    received = try r.receive.decrypt(ad: [], ciphertext)
                } else {
                    ciphertext = try sender.writeMessage(payload: payload)
                    received = try receiver.readMessage(ciphertext)
                }
                #expect(Hex.encode(ciphertext) == m.ciphertext, "\(v.protocol_name) message \(i)")
                #expect(received == payload, "\(v.protocol_name) message \(i)")
            }
            #expect(Hex.encode(initiator.transport?.handshakeHash ?? []) == v.handshake_hash, "\(v.protocol_name)")
            #expect(responder.transport?.handshakeHash == initiator.transport?.handshakeHash)
            patterns.insert(initiator.pattern.name)
        }
        for required in ["NN", "XX", "IK", "NNpsk0", "KKpsk0", "XXpsk3"] { #expect(patterns.contains(required)) }
    }

    @Test("XXpsk0: a wrong pre-shared key fails on the very first message, before any identity is sent")
    func xxpsk0() throws {
        let name = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b"
        let mesh = SecretBytes(copying: SecureRandom.bytes(32))
        let i = try Noise.HandshakeState(protocolName: name, role: .initiator, prologue: [1], localStatic: X25519KeyPair(), presharedKeys: [mesh])
        let r = try Noise.HandshakeState(protocolName: name, role: .responder, prologue: [1], localStatic: X25519KeyPair(), presharedKeys: [mesh])
        #expect(try r.readMessage(try i.writeMessage(payload: [1])) == [1])
        #expect(try i.readMessage(try r.writeMessage(payload: [2])) == [2])
        #expect(try r.readMessage(try i.writeMessage(payload: [3])) == [3])
        let (ti, tr) = (i.transport!, r.transport!)
        #expect(ti.handshakeHash == tr.handshakeHash)
        #expect(try tr.receive.decrypt(ad: [], ti.send.encrypt(ad: [], [9, 9])) == [9, 9])
        #expect(try ti.receive.decrypt(ad: [], tr.send.encrypt(ad: [], [8])) == [8])

        let outsider = try Noise.HandshakeState(protocolName: name, role: .initiator, localStatic: X25519KeyPair(),
                                                presharedKeys: [SecretBytes(copying: SecureRandom.bytes(32))])
        let victim = try Noise.HandshakeState(protocolName: name, role: .responder, localStatic: X25519KeyPair(), presharedKeys: [mesh])
        #expect(throws: Noise.Failure.decryptFailed) { try victim.readMessage(try outsider.writeMessage(payload: [])) }
        #expect(victim.remoteStatic == nil)
    }

    @Test("tampering, truncation, turn order and rekeying behave")
    func misuse() throws {
        let name = "Noise_NN_25519_ChaChaPoly_BLAKE2b"
        let i = try Noise.HandshakeState(protocolName: name, role: .initiator)
        let r = try Noise.HandshakeState(protocolName: name, role: .responder)
        #expect(throws: Noise.Failure.outOfTurn) { try r.writeMessage() }
        _ = try r.readMessage(try i.writeMessage())
        var m2 = try r.writeMessage(payload: [7])
        #expect(throws: Noise.Failure.truncated) { try i.readMessage(Array(m2.prefix(40))) }
        m2[m2.count - 1] ^= 1
        #expect(throws: Noise.Failure.decryptFailed) { try i.readMessage(m2) }

        let a = try Noise.HandshakeState(protocolName: name, role: .initiator)
        let b = try Noise.HandshakeState(protocolName: name, role: .responder)
        _ = try b.readMessage(try a.writeMessage())
        _ = try a.readMessage(try b.writeMessage())
        let (ta, tb) = (a.transport!, b.transport!)
        ta.send.rekey(); tb.receive.rekey()
        #expect(try tb.receive.decrypt(ad: [], ta.send.encrypt(ad: [], [5])) == [5])
        ta.send.rekey()
        #expect(throws: Noise.Failure.decryptFailed) { try tb.receive.decrypt(ad: [], ta.send.encrypt(ad: [], [5])) }
        #expect(throws: Noise.Failure.unsupportedProtocol("Noise_QQ_25519_ChaChaPoly_BLAKE2b")) {
            try Noise.HandshakeState(protocolName: "Noise_QQ_25519_ChaChaPoly_BLAKE2b", role: .initiator)
        }
        #expect(throws: Noise.Failure.unsupportedProtocol("Noise_XX_448_AESGCM_SHA256")) {
            try Noise.HandshakeState(protocolName: "Noise_XX_448_AESGCM_SHA256", role: .initiator)
        }
        #expect(throws: Noise.Failure.self) { try Noise.HandshakeState(protocolName: "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b", role: .initiator) }
        #expect(Noise.Pattern("XXpsk9") == nil && Noise.Pattern("XXpsk") == nil && Noise.Pattern("XXpsk0+psk3")?.pskCount == 2)
    }

    @Test("an Ed25519 identity converts to an X25519 key pair that agrees with its converted public key")
    func identityConversion() throws {
        let id = SigningKey()
        let x = X25519KeyPair(converting: id)
        #expect(try id.publicKey.x25519() == x.publicKey)
        let other = X25519KeyPair()
        let s1 = try x.sharedSecret(with: other.publicKey).withUnsafeBytes { Array($0) }
        let s2 = try other.sharedSecret(with: id.publicKey.x25519()).withUnsafeBytes { Array($0) }
        #expect(s1 == s2)
        #expect(throws: CryptoError.self) { try other.sharedSecret(with: [UInt8](repeating: 0, count: 32)) }
    }
}

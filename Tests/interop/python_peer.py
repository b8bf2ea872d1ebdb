#!/usr/bin/env python3
"""An independent GPUMesh peer, written from Docs/PROTOCOL.md alone.

It uses a stock Noise library (`noiseprotocol`) and libsodium bindings (PyNaCl), nothing from
GPUMesh, to show that the protocol document is complete. The Swift test suite runs it against
the real binary.

    python_peer.py channel  --contact C --mesh-key FILE   # against `gpumesh debug echo`
    python_peer.py datagram --contact C --mesh-key FILE   # against `gpumesh node`
    python_peer.py dht      --contact C --name NAME       # DHT messages and a record, against `gpumesh node`

Prints one JSON object; exits 0 only if every check passed. Talks to loopback addresses only.
"""
import argparse
import hashlib
import json
import os
import socket
import struct
import sys
import time

import nacl.bindings as sodium
import nacl.signing
from noise.connection import Keypair, NoiseConnection

PUBLIC_MESH = hashlib.blake2b(b"gpumesh public mesh v1", digest_size=32).digest()


def parse_contact(text):
    assert text.startswith("gpm1:"), "contact must start with gpm1:"
    key_hex, endpoints = text[5:].split("@", 1)
    out = {"key": bytes.fromhex(key_hex), "udp": None, "tcp": None}
    for ep in endpoints.split(","):
        transport, rest = ep.split(":", 1)
        host, port = rest.rsplit(":", 1)
        host = host.strip("[]")
        assert host in ("127.0.0.1", "::1") or host.startswith("127."), "loopback only"
        if out[transport] is None:
            out[transport] = (host, int(port))
    return out


def read_mesh_key(path):
    if path is None:
        return PUBLIC_MESH
    data = open(path, "rb").read()
    assert data[:20] == b"GPUMESH-MESH-KEY-V1\n" and len(data) == 52, "not a mesh key file"
    return data[20:]


class Identity:
    def __init__(self):
        seed = os.urandom(32)
        self.ed_pk, self.ed_sk = sodium.crypto_sign_seed_keypair(seed)
        self.x_sk = sodium.crypto_sign_ed25519_sk_to_curve25519(self.ed_sk)
        self.x_pk = sodium.crypto_scalarmult_base(self.x_sk)
        self.signer = nacl.signing.SigningKey(seed)

    def proof(self):
        sig = self.signer.sign(b"gpumesh/noise-identity/v1" + self.x_pk).signature
        return self.ed_pk + sig


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def read_frame(sock):
    (length,) = struct.unpack(">H", recv_exact(sock, 2))
    return recv_exact(sock, length)


def write_frame(sock, body):
    sock.sendall(struct.pack(">H", len(body)) + body)


def channel(contact, mesh_key):
    me = Identity()
    host, port = contact["tcp"]
    sock = socket.create_connection((host, port), timeout=10)
    noise = NoiseConnection.from_name(b"Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b")
    noise.set_as_initiator()
    noise.set_psks(psk=mesh_key)
    noise.set_prologue(b"GPUMesh channel v1")
    noise.set_keypair_from_private_bytes(Keypair.STATIC, me.x_sk)
    noise.start_handshake()
    write_frame(sock, noise.write_message(b""))
    proof = bytes(noise.read_message(read_frame(sock)))
    remote_static = bytes(noise.noise_protocol.handshake_state.rs.public_bytes)
    ed_pk, sig = proof[:32], proof[32:]
    assert len(proof) == 96, "identity proof must be 96 bytes"
    nacl.signing.VerifyKey(ed_pk).verify(b"gpumesh/noise-identity/v1" + remote_static, sig)
    assert sodium.crypto_sign_ed25519_pk_to_curve25519(ed_pk) == remote_static, "static key is not the identity's"
    assert ed_pk == contact["key"], "the responder is not the peer the contact names"
    write_frame(sock, noise.write_message(me.proof()))
    assert noise.handshake_finished

    def send(message):
        chunks = [message[i:i + 65518] for i in range(0, len(message), 65518)] or [b""]
        for i, chunk in enumerate(chunks):
            kind = 0 if i == len(chunks) - 1 else 1
            write_frame(sock, noise.encrypt(chunk + bytes([kind])))

    def receive():
        message = b""
        while True:
            plain = bytes(noise.decrypt(read_frame(sock)))
            data, kind = plain[:-1], plain[-1]
            message += data
            if kind == 0:
                return message
            assert kind == 1, "unexpected frame type %d" % kind

    small, big = b"hello from python", os.urandom(200_000)
    send(small)
    send(big)
    echoed = [receive(), receive()]
    assert echoed == [small, big], "echo mismatch"
    write_frame(sock, noise.encrypt(bytes([2])))  # close frame
    sock.close()
    return {"ok": True, "peer": hashlib.blake2b(ed_pk, digest_size=32).hexdigest(), "echoed_bytes": len(small) + len(big)}


class Datagrams:
    """A sealed-datagram session with one peer (PROTOCOL.md, "Sealed datagrams")."""

    def __init__(self, contact, mesh_key, me):
        self.me, self.peer_ed = me, contact["key"]
        peer_x = sodium.crypto_sign_ed25519_pk_to_curve25519(self.peer_ed)
        shared = sodium.crypto_scalarmult(me.x_sk, peer_x)
        lo, hi = sorted([me.ed_pk, self.peer_ed])
        self.key = hashlib.blake2b(b"gpumesh/datagram/v1" + shared + lo + hi, digest_size=32, key=mesh_key).digest()
        self.addr = contact["udp"]
        self.sock = socket.socket(socket.AF_INET6 if ":" in self.addr[0] else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(3)

    def send(self, body, cookie=None):
        header = bytes([1, 1 if cookie else 0]) + self.me.ed_pk + struct.pack(">Q", int(time.time() * 1000)) + os.urandom(16)
        if cookie:
            header += cookie
        datagram = header + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(body, header, header[34:58], self.key)
        self.sock.sendto(datagram, self.addr)
        return len(datagram)

    def receive(self):
        data, _ = self.sock.recvfrom(65536)
        assert data[0] == 1 and data[1] == 0, "unexpected header"
        assert data[2:34] == self.peer_ed, "reply from another key"
        return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(data[58:], data[:58], data[34:58], self.key), len(data)


DHT_HEADER = ">BQH"  # type, request ID, TCP port


def dht(contact, mesh_key, name):
    me = Identity()
    link = Datagrams(contact, mesh_key, me)
    checks = {}

    def answer(request_id, body):
        """Sends a DHT request; answers the node's own PINGs (its check of our address) meanwhile."""
        while True:
            reply, size = link.receive()
            if reply[0] == 16:  # the node checks our address: answer PONG
                _, rid, _ = struct.unpack(DHT_HEADER, reply[:11])
                link.send(struct.pack(DHT_HEADER, 17, rid, 0))
                checks["answered_the_nodes_ping"] = True
                continue
            if reply[0] == 5 or struct.unpack(">Q", reply[1:9])[0] == request_id:
                return reply, size

    # An unpadded FIND_NODE from an address the node has not proven: a cookie challenge, no larger.
    rid = struct.unpack(">Q", os.urandom(8))[0]
    target = os.urandom(32)
    sent = link.send(struct.pack(DHT_HEADER, 18, rid, 0) + target)
    reply, size = answer(rid, None)
    assert reply[0] == 5 and reply[1:9] == struct.pack(">Q", rid) and size <= sent, "expected a cookie challenge"
    # The same request padded to 360 bytes: answered at once, within three times its size.
    rid = struct.unpack(">Q", os.urandom(8))[0]
    body = struct.pack(DHT_HEADER, 18, rid, 0) + target
    sent = link.send(body + bytes(360 - len(body)))
    reply, size = answer(rid, None)
    assert reply[0] == 19 and size <= 3 * sent, "expected NODES within 3x"
    checks["nodes_returned"] = reply[11]
    # STORE a record signed here; the name's key is BLAKE2b-256("gpumesh/dht-key/v1:" + name).
    key = hashlib.blake2b(b"gpumesh/dht-key/v1:" + name.encode(), digest_size=32).digest()
    value = b"from python"
    unsigned = bytes([1]) + me.ed_pk + key + struct.pack(">QQH", int(time.time() * 1000), int(time.time() * 1000) + 600_000, len(value)) + value
    record = unsigned + me.signer.sign(b"gpumesh/dht-record/v1" + unsigned).signature
    rid = struct.unpack(">Q", os.urandom(8))[0]
    link.send(struct.pack(DHT_HEADER, 20, rid, 0) + record)
    reply, _ = answer(rid, None)
    assert reply[0] == 21 and reply[11] == 0, "STORE not stored: %r" % reply[11:]
    # A replayed sequence is refused (2), a forged signature too (3).
    link.send(struct.pack(DHT_HEADER, 20, rid + 1, 0) + record[:-1] + bytes([record[-1] ^ 1]))
    reply, _ = answer(rid + 1, None)
    assert reply[0] == 21 and reply[11] in (1, 3), "a forged record was not refused"
    # FIND_VALUE (padded) returns exactly the stored bytes.
    rid = struct.unpack(">Q", os.urandom(8))[0]
    body = struct.pack(DHT_HEADER, 22, rid, 0) + key + struct.pack(">H", 0)
    link.send(body + bytes(360 - len(body)))
    reply, _ = answer(rid, None)
    assert reply[0] == 23, "expected VALUES"
    total, offset, count = struct.unpack(">HHB", reply[11:16])
    assert total == 1 and offset == 0 and count == 1 and reply[16:] == record, "VALUES differs from the stored record"
    checks.update({"ok": True, "key": key.hex(), "publisher": me.ed_pk.hex()})
    return checks


def datagram(contact, mesh_key):
    me = Identity()
    peer_ed = contact["key"]
    peer_x = sodium.crypto_sign_ed25519_pk_to_curve25519(peer_ed)
    shared = sodium.crypto_scalarmult(me.x_sk, peer_x)
    lo, hi = sorted([me.ed_pk, peer_ed])
    key = hashlib.blake2b(b"gpumesh/datagram/v1" + shared + lo + hi, digest_size=32, key=mesh_key).digest()
    host, port = contact["udp"]
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)

    def seal(body, cookie=None):
        header = bytes([1, 1 if cookie else 0]) + me.ed_pk + struct.pack(">Q", int(time.time() * 1000)) + os.urandom(16)
        if cookie:
            header += cookie
        return header + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(body, header, header[34:58], key)

    def open_reply():
        data, _ = sock.recvfrom(65536)
        assert data[0] == 1 and data[1] == 0, "unexpected header"
        assert data[2:34] == peer_ed, "reply from another key"
        return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(data[58:], data[:58], data[34:58], key), len(data)

    # ping -> pong, same size
    nonce = struct.unpack(">Q", os.urandom(8))[0]
    ping = seal(bytes([1]) + struct.pack(">Q", nonce))
    sock.sendto(ping, (host, port))
    body, size = open_reply()
    assert body == bytes([2]) + struct.pack(">Q", nonce), "bad pong"
    assert size == len(ping), "pong larger than ping"
    # info request -> cookie challenge (same size) -> request with cookie -> contact
    nonce = struct.unpack(">Q", os.urandom(8))[0]
    request = bytes([3]) + struct.pack(">Q", nonce) + bytes(16)
    first = seal(request)
    sock.sendto(first, (host, port))
    body, size = open_reply()
    assert body[:9] == bytes([5]) + struct.pack(">Q", nonce) and len(body) == 25, "expected a cookie challenge"
    assert size <= len(first), "challenge larger than the request"
    sock.sendto(seal(request, cookie=body[9:]), (host, port))
    body, _ = open_reply()
    assert body[:9] == bytes([4]) + struct.pack(">Q", nonce), "expected an info reply"
    returned = body[9:].decode()
    assert parse_contact(returned)["key"] == peer_ed, "info reply names another key"
    # a replay of the first ping must be ignored
    sock.sendto(ping, (host, port))
    try:
        sock.settimeout(0.3)
        sock.recvfrom(65536)
        raise AssertionError("a replayed ping was answered")
    except socket.timeout:
        pass
    return {"ok": True, "contact": returned}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["channel", "datagram", "dht"])
    parser.add_argument("--contact", required=True)
    parser.add_argument("--mesh-key")
    parser.add_argument("--name", default="interop")
    args = parser.parse_args()
    contact = parse_contact(args.contact)
    mesh_key = read_mesh_key(args.mesh_key)
    try:
        if args.mode == "channel":
            result = channel(contact, mesh_key)
        elif args.mode == "dht":
            result = dht(contact, mesh_key, args.name)
        else:
            result = datagram(contact, mesh_key)
    except Exception as e:  # report every failure as JSON for the calling test
        print(json.dumps({"ok": False, "error": "%s: %s" % (type(e).__name__, e)}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

import Logging
import MeshCore
import MeshCrypto
import MeshDHT

/// Drives a `Kademlia.Instance` on a node's loop: turns its directives into sealed datagrams and
/// timers, and the network's answers back into events. Loop-confined.
///
/// The node decodes and authenticates datagrams and decides whether a sender's address is
/// proven; the shell does the rest: outstanding requests (for cookie retries), one libuv timer
/// for all request deadlines, a one-second housekeeping tick, completions of lookups, puts and
/// gets, and joining with retries.
final class DHTShell {
    typealias Send = (_ body: [UInt8], _ to: PublicKey, _ at: SocketAddress, _ cookie: [UInt8]?) -> Void

    private(set) var instance: Kademlia.Instance
    private let loop: EventLoop
    private let tcpPort: UInt16
    private let send: Send
    private let count: (NodeCounter) -> Void
    private var logger: Logger
    private var outstanding: [UInt64: Outstanding] = [:]
    private var deadlines = MinHeap<Deadline>()
    private var deadlineTimer: LoopTimer?
    private var armedFor: UInt64 = .max
    private var tickTimer: LoopTimer?
    private var completions: [Kademlia.LookupID: (Kademlia.Directive) -> Void] = [:]
    private var stopped = false

    /// Join state.
    private(set) var seeds: [Contact] = []
    private(set) var joined = false
    private(set) var joinAttempts = 0
    private var joining = false
    private var nextJoinAt: UInt64 = 0
    private var backoff: UInt64 = 1_000
    /// The longest wait between join attempts (ms).
    static let maxBackoff: UInt64 = 60_000

    private struct Outstanding {
        let body: [UInt8]
        let peer: PublicKey
        let address: SocketAddress
        var cookieRetried = false
    }

    init(instance: Kademlia.Instance, loop: EventLoop, tcpPort: UInt16, logger: Logger,
         count: @escaping (NodeCounter) -> Void, send: @escaping Send) {
        self.instance = instance
        self.loop = loop
        self.tcpPort = tcpPort
        self.logger = logger
        self.count = count
        self.send = send
    }

    /// Wall-clock milliseconds: records carry absolute expiry times, so the DHT runs on Unix time.
    static func now() -> UInt64 { MeshNode.wallClockMilliseconds() }

    func start() throws {
        tickTimer = try loop.schedule(after: .seconds(1), repeating: .seconds(1)) { [unowned self] in
            let now = Self.now()
            apply(instance.tick(now: now))
            if !seeds.isEmpty, !joining, instance.table.count == 0, now >= nextJoinAt {
                if joined {
                    logger.warning("the routing table is empty: rejoining through the bootstrap peers")
                    joined = false
                }
                join()
            }
        }
    }

    func stop() {
        stopped = true
        tickTimer?.cancel()
        deadlineTimer?.cancel()
        let waiting = completions
        completions = [:]
        for (id, done) in waiting { done(.lookupFinished(id, result: [], hops: 0, requests: 0)) }
        outstanding = [:]
    }

    // MARK: Joining

    /// Joins through `seeds`, retrying with exponential backoff (1 s doubling to 60 s) while
    /// none of them answers.
    func join(through seeds: [Contact]) {
        self.seeds = seeds.filter { $0.peerID != instance.local.peerID }
        guard !self.seeds.isEmpty else { return }
        join()
    }

    private func join() {
        guard !stopped else { return }
        joining = true
        joinAttempts += 1
        let now = Self.now()
        let (id, out) = instance.bootstrap(seeds, now: now)
        completions[id] = { [unowned self] directive in
            guard case .lookupFinished(_, let result, _, _) = directive, !stopped else { return }
            joining = false
            if result.isEmpty {
                let wait = backoff
                backoff = min(backoff * 2, Self.maxBackoff)
                nextJoinAt = Self.now() + wait
                logger.warning("no bootstrap peer answered (\(seeds.count) tried, attempt \(joinAttempts)); retrying in \(wait / 1000) s")
            } else {
                backoff = 1_000
                if !joined { logger.info("joined the mesh", metadata: ["peers": "\(instance.table.count)", "attempts": "\(joinAttempts)"]) }
                joined = true
                // Explore every bucket once, so the table covers the whole ID space.
                apply(instance.refresh(now: Self.now()))
            }
        }
        apply(out)
    }

    // MARK: Operations

    /// Starts an operation (`body` returns its ID and first directives) and calls `done` with
    /// its finishing directive.
    func run(_ body: (inout Kademlia.Instance, UInt64) -> (Kademlia.LookupID, [Kademlia.Directive]),
             done: @escaping (Kademlia.Directive) -> Void) {
        let (id, out) = body(&instance, Self.now())
        completions[id] = done
        apply(out)
    }

    /// Starts a publish (signing errors are thrown before anything is sent).
    func publish(key: PeerID, value: [UInt8], lifetime: UInt64, keepAlive: Bool = true,
                 done: @escaping (Kademlia.Directive) -> Void) throws(Kademlia.PublishError) {
        let (id, out) = try instance.publish(key: key, value: value, lifetime: lifetime, keepAlive: keepAlive, now: Self.now())
        completions[id] = done
        apply(out)
    }

    // MARK: Events from the node

    /// A DHT request from an authenticated sender; the node has decided whether its address is proven.
    func request(_ message: Kademlia.Message, from sender: Contact, proven: Bool) {
        count(.dhtRequestsIn)
        apply(instance.onMessage(message, from: sender, now: Self.now(), addressProven: proven))
    }

    /// A DHT response: accepted only for an outstanding request to that peer at that address.
    /// Returns false for an unsolicited one.
    func response(_ message: Kademlia.Message, from sender: Contact, at address: SocketAddress) -> Bool {
        guard let o = outstanding[message.requestID], o.peer == sender.publicKey, o.address == address else { return false }
        outstanding[message.requestID] = nil
        apply(instance.onMessage(message, from: sender, now: Self.now()))
        return true
    }

    /// A cookie challenge for request `id`: resends it once with the cookie. False if unsolicited.
    func challenged(_ id: UInt64, cookie: [UInt8], from peer: PublicKey, at address: SocketAddress) -> Bool {
        guard var o = outstanding[id], o.peer == peer, o.address == address, !o.cookieRetried else { return false }
        o.cookieRetried = true
        outstanding[id] = o
        count(.dhtCookieRetries)
        send(o.body, peer, address, cookie)
        return true
    }

    // MARK: Directives

    private func apply(_ directives: [Kademlia.Directive]) {
        for d in directives {
            switch d {
            case .send(let message, let contact):
                guard let address = contact.address(for: .udp) else { continue }
                // Requests that are answered with more bytes go padded, so a peer that has not yet
                // proven our address can answer at once (see `Wire.paddedRequestBytes`).
                let body = Kademlia.Wire.encode(message, tcpPort: tcpPort, padded: true)
                if !message.isResponse {
                    outstanding[message.requestID] = Outstanding(body: body, peer: contact.publicKey, address: address)
                    count(.dhtRequestsOut)
                }
                send(body, contact.publicKey, address, nil)
            case .setTimeout(let id, let deadline):
                deadlines.push(Deadline(at: deadline, requestID: id))
                arm()
            case .lookupFinished(let id, _, _, _), .putFinished(let id, _), .getFinished(let id, _):
                switch d {
                case .lookupFinished: count(.dhtLookups)
                case .getFinished: count(.dhtGets)
                default: count(.dhtPuts)
                }
                completions.removeValue(forKey: id)?(d)
            }
        }
    }

    /// Keeps the one deadline timer set for the earliest deadline.
    private func arm() {
        guard !stopped, let earliest = deadlines.min?.at, earliest < armedFor else { return }
        deadlineTimer?.cancel()
        armedFor = earliest
        let now = Self.now()
        let delay = earliest > now ? earliest - now : 0
        deadlineTimer = try? loop.schedule(after: .milliseconds(Int64(delay))) { [unowned self] in
            armedFor = .max
            deadlineTimer = nil
            let now = Self.now()
            while let due = deadlines.min, due.at <= now {
                _ = deadlines.pop()
                let id = due.requestID
                // Answered requests left the outstanding set; their deadlines pass silently.
                guard outstanding.removeValue(forKey: id) != nil else { continue }
                count(.dhtTimeouts)
                apply(instance.onTimeout(requestID: id, now: now))
            }
            arm()
        }
    }

    /// Requests sent and not yet answered (for tests).
    var outstandingCount: Int { outstanding.count }
}

/// A request's deadline in the shell's heap (earliest first; ties by request ID).
struct Deadline: Comparable {
    let at: UInt64
    let requestID: UInt64
    static func < (a: Deadline, b: Deadline) -> Bool { a.at != b.at ? a.at < b.at : a.requestID < b.requestID }
}

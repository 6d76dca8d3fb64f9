// The request attributes Backstop reads by name, and a byte-level lookup from an
// attribute name to its case. Names not listed here are kept in the request but ignored.
// This file does not interpret values; PolicyRequest does.

import Foundation

public enum Attribute: Int, CaseIterable, Sendable {
    case request
    case protocolState
    case protocolName
    case heloName
    case queueID
    case sender
    case recipient
    case recipientCount
    case clientAddress
    case clientName
    case reverseClientName
    case instance
    case saslMethod
    case saslUsername
    case saslSender
    case size
    case serverAddress
    case serverPort
    case clientPort
    case stress
    case policyContext
    case encryptionProtocol
    case ccertSubject
    case ccertFingerprint
    case etrnDomain

    /// The attribute name exactly as Postfix sends it.
    public var wireName: String {
        switch self {
        case .request: "request"
        case .protocolState: "protocol_state"
        case .protocolName: "protocol_name"
        case .heloName: "helo_name"
        case .queueID: "queue_id"
        case .sender: "sender"
        case .recipient: "recipient"
        case .recipientCount: "recipient_count"
        case .clientAddress: "client_address"
        case .clientName: "client_name"
        case .reverseClientName: "reverse_client_name"
        case .instance: "instance"
        case .saslMethod: "sasl_method"
        case .saslUsername: "sasl_username"
        case .saslSender: "sasl_sender"
        case .size: "size"
        case .serverAddress: "server_address"
        case .serverPort: "server_port"
        case .clientPort: "client_port"
        case .stress: "stress"
        case .policyContext: "policy_context"
        case .encryptionProtocol: "encryption_protocol"
        case .ccertSubject: "ccert_subject"
        case .ccertFingerprint: "ccert_fingerprint"
        case .etrnDomain: "etrn_domain"
        }
    }

    /// Finds the attribute whose name is `name`, without building a String.
    @inlinable
    public static func lookup(_ name: UnsafeRawBufferPointer) -> Attribute? {
        lookupSlow(name)
    }

    /// A switch on the length, then memcmp against the name literals: no table, no
    /// reference counting, no lazy global, because this runs for every attribute line of
    /// every request. `AttributeTests` checks it against `wireName` for every case.
    @usableFromInline
    static func lookupSlow(_ name: UnsafeRawBufferPointer) -> Attribute? {
        guard let base = name.baseAddress else { return nil }
        @inline(__always) func isName(_ literal: StaticString) -> Bool {
            memcmp(literal.utf8Start, base, literal.utf8CodeUnitCount) == 0
        }
        switch name.count {
        case 4: return isName("size") ? .size : nil
        case 6: return isName("sender") ? .sender : isName("stress") ? .stress : nil
        case 7: return isName("request") ? .request : nil
        case 8: return isName("instance") ? .instance : isName("queue_id") ? .queueID : nil
        case 9: return isName("recipient") ? .recipient : isName("helo_name") ? .heloName : nil
        case 11:
            if isName("client_name") { return .clientName }
            if isName("client_port") { return .clientPort }
            if isName("server_port") { return .serverPort }
            if isName("sasl_method") { return .saslMethod }
            if isName("sasl_sender") { return .saslSender }
            if isName("etrn_domain") { return .etrnDomain }
            return nil
        case 13:
            if isName("protocol_name") { return .protocolName }
            if isName("sasl_username") { return .saslUsername }
            if isName("ccert_subject") { return .ccertSubject }
            return nil
        case 14:
            if isName("client_address") { return .clientAddress }
            if isName("protocol_state") { return .protocolState }
            if isName("server_address") { return .serverAddress }
            if isName("policy_context") { return .policyContext }
            return nil
        case 15: return isName("recipient_count") ? .recipientCount : nil
        case 17: return isName("ccert_fingerprint") ? .ccertFingerprint : nil
        case 19:
            if isName("reverse_client_name") { return .reverseClientName }
            if isName("encryption_protocol") { return .encryptionProtocol }
            return nil
        default: return nil
        }
    }
}

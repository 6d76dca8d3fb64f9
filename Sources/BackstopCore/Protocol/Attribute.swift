// The request attributes Backstop reads by name, and a byte-level lookup from an
// attribute name to its case. Names not listed here are kept in the request but ignored.
// This file does not interpret values; PolicyRequest does.

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

    /// Name bytes grouped by length so a lookup compares only names of the right size.
    private static let byLength: [[(bytes: [UInt8], attribute: Attribute)]] = {
        var table = [[(bytes: [UInt8], attribute: Attribute)]](repeating: [], count: 32)
        for attribute in Attribute.allCases {
            let bytes = Array(attribute.wireName.utf8)
            table[bytes.count].append((bytes, attribute))
        }
        return table
    }()

    /// Finds the attribute whose name is `name`, without building a String.
    @inlinable
    public static func lookup(_ name: UnsafeRawBufferPointer) -> Attribute? {
        lookupSlow(name)
    }

    @usableFromInline
    static func lookupSlow(_ name: UnsafeRawBufferPointer) -> Attribute? {
        guard name.count < byLength.count else { return nil }
        for candidate in byLength[name.count] {
            if candidate.bytes.withUnsafeBytes({ $0.elementsEqual(name) }) {
                return candidate.attribute
            }
        }
        return nil
    }
}

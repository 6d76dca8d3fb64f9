// The recipient table as a watched table: RecipientTableSource loads the files, this file
// says how the table is named in logs and which gauges a loaded table sets. The watching
// itself (polling, SIGHUP, keeping the last good version) is WatchedTable's.

import Foundation
import Logging
import Metrics

public typealias RecipientDirectory = WatchedTable<RecipientTableSource>

extension RecipientTableSource: WatchedTableSource {
    public var noun: String { "recipient table" }
    public var recoveryMessage: String {
        "recipient table loaded again after a broken edit; unknown recipients get the normal answer"
    }

    public func summary(_ table: RecipientTable) -> Logger.Metadata {
        ["addresses": "\(table.addressCount)", "catch_alls": "\(table.catchAllCount)", "domains": "\(table.domainCount)"]
    }

    public func recordGauges(_ table: RecipientTable) {
        Gauge(label: "backstop_recipients_table_entries", dimensions: [("kind", "mailbox")]).record(table.addressCount)
        Gauge(label: "backstop_recipients_table_entries", dimensions: [("kind", "catch_all")]).record(table.catchAllCount)
        Gauge(label: "backstop_recipients_table_entries", dimensions: [("kind", "domain")]).record(table.domainCount)
        Gauge(label: "backstop_recipients_last_reload_timestamp_seconds").record(Date().timeIntervalSince1970)
    }

    public func failureCounter() -> Counter { Counter(label: "backstop_recipients_reload_failures_total") }
}

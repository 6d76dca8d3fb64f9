/* The only C that Swift sees: libspf2's public headers, in the order they need.
 * Nothing outside SPFVerifier imports this module. */
#ifndef BACKSTOP_CSPF2_SHIM_H
#define BACKSTOP_CSPF2_SHIM_H
#include <sys/types.h>
#include <netinet/in.h>
#include <arpa/nameser.h>
#include <spf2/spf.h>
#include <spf2/spf_dns.h>
#include <spf2/spf_dns_rr.h>
#include <spf2/spf_dns_cache.h>
#include <spf2/spf_dns_resolv.h>

/* libspf2 prints warnings, notices and debug text on stderr through these global
 * handlers; Backstop logs for itself. Set from C because Swift 6 refuses to assign
 * C global variables (shared mutable state). Errors (SPF_error_handler) are left alone. */
static inline void backstop_spf_silent_handler(const char *file, int line, const char *message) {
    (void)file; (void)line; (void)message;
}
static inline void backstop_spf_quiet(void) {
    SPF_warning_handler = backstop_spf_silent_handler;
    SPF_info_handler = backstop_spf_silent_handler;
    SPF_debug_handler = backstop_spf_silent_handler;
}
#endif

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
#endif

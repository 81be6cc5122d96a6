/*
 * udp.h - UDP mappings. Each public sender (address and port) is a flow
 * with an id of its own; its datagrams cross the tunnel as DGRAM frames,
 * never queued: a datagram the tunnel cannot take now is dropped and
 * counted. On the client each flow has its own socket connected to
 * local_addr, so replies go back to the right sender. A flow silent for
 * udp_timeout is forgotten on both sides.
 */
#ifndef WMPROXY_UDP_H
#define WMPROXY_UDP_H

#include <stdint.h>
#include <string>
#include "conf.h"
#include "mux.h"
#include "sock.h"

struct udp_port;

/* Server: a public UDP socket for mapping idx of tunnel t. Returns nullptr
 * with *err ("bind udp 0.0.0.0:5353: Address already in use"). */
udp_port *udp_port_open(const addr_conf &a, tunnel *t, uint32_t idx, uint32_t timeout_ms, const std::string &name,
                        std::string *err);
/* Server: close the socket and forget its flows. */
void udp_port_close(udp_port *u);
/* Server: a reply from tunnel t for flow of its mapping idx: send it to the
 * flow's sender. A flow of another tunnel or mapping is not t's to answer:
 * dropped. */
void udp_port_reply(tunnel *t, uint32_t flow, uint32_t idx, const uint8_t *p, size_t len);

/* Client: a datagram of flow for a mapping whose local_addr is local. */
void udp_flow_dgram(tunnel *t, uint32_t flow, uint32_t idx, const sockaddr_buf &local, uint32_t timeout_ms,
                    const uint8_t *p, size_t len);
/* Client: the tunnel is gone: close every flow. */
void udp_flows_close(void);
size_t udp_flow_count(void);

#endif

/*
 * transport.h - a byte stream over a nonblocking socket: plain TCP, or TLS
 * driven over memory BIOs (tls.h). The mux and the relays only see this.
 *
 * Result convention for every call: >= 0 progress (bytes), IO_AGAIN when the
 * socket would block (wait for the readiness the caller already tracks),
 * IO_ERR when the connection is broken (error() says why).
 */
#ifndef WMPROXY_TRANSPORT_H
#define WMPROXY_TRANSPORT_H

#include <sys/types.h>
#include <string>
#include <sys/uio.h>

enum { IO_AGAIN = -1, IO_ERR = -2 };

struct transport {
    int fd;
    explicit transport(int fd_) : fd(fd_) {}
    virtual ~transport() {}

    /* Drive the handshake. Returns 1 when established, IO_AGAIN, IO_ERR.
     * The plain transport is established at once. */
    virtual int handshake() = 0;
    /* Read into iov. Returns bytes (>0), 0 at end of stream, IO_AGAIN, IO_ERR. */
    virtual ssize_t readv(const iovec *iov, int n) = 0;
    /* Write from iov. Returns bytes taken (>0), IO_AGAIN, IO_ERR. Bytes
     * taken may still sit inside the transport: call flush() on writability. */
    virtual ssize_t writev(const iovec *iov, int n) = 0;
    /* Push out what the transport holds. 1 = nothing left, IO_AGAIN, IO_ERR. */
    virtual int flush() = 0;
    /* Close our write direction (TLS close_notify, then FIN). 0, IO_AGAIN, IO_ERR. */
    virtual int shutdown_write() = 0;
    /* Plaintext already decrypted and held inside: keep reading, epoll
     * will not report it. */
    virtual bool pending() const { return false; }
    /* Whether a read returning less than asked means the socket is drained
     * for now (true of plain TCP; TLS may hold ciphertext it has not yet
     * decrypted), so the reader may wait for the next edge. */
    virtual bool short_read_drains() const { return false; }
    /* The connection is quiet: give back buffers that hold nothing. */
    virtual void release() {}
    /* Bytes written but still held inside the transport. */
    virtual size_t buffered() const { return 0; }
    /* Why the last IO_ERR happened, for a log line. */
    virtual const char *error() const = 0;
    /* For log lines after the handshake: "" for plain TCP, else
     * "tls=TLSv1.3 cipher=TLS_AES_128_GCM_SHA256". */
    virtual std::string describe() const { return ""; }
};

/* A transport over plain TCP. Takes ownership of fd (closed on delete). */
transport *plain_transport_new(int fd);

#endif

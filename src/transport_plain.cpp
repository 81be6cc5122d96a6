/*
 * transport_plain.cpp - the transport over plain TCP: straight syscalls.
 */
#include "transport.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct plain_transport : transport {
    int err = 0;
    explicit plain_transport(int fd_) : transport(fd_) {}
    ~plain_transport() override
    {
        if (fd >= 0)   /* -1: taken for a lingering close */
            close(fd);
    }

    int handshake() override { return 1; }

    ssize_t readv(const iovec *iov, int n) override
    {
        ssize_t r = ::readv(fd, iov, n);
        if (r >= 0)
            return r;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return IO_AGAIN;
        err = errno;
        return IO_ERR;
    }

    ssize_t writev(const iovec *iov, int n) override
    {
        ssize_t r = ::writev(fd, iov, n);
        if (r >= 0)
            return r;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return IO_AGAIN;
        err = errno;
        return IO_ERR;
    }

    int flush() override { return 1; }
    bool short_read_drains() const override { return true; }

    int shutdown_write() override
    {
        if (shutdown(fd, SHUT_WR) < 0 && errno != ENOTCONN) {
            err = errno;
            return IO_ERR;
        }
        return 0;
    }

    const char *error() const override { return err ? strerror(err) : "connection closed"; }
};

transport *plain_transport_new(int fd)
{
    return new plain_transport(fd);
}

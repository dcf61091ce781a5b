/* wsload: the realtime bench's WebSocket load generator and echo upstream, in C.
 *
 * bench/realtime.py drives hundreds of sessions at real-time pace; a Python client and echo
 * fell behind at 500 (67% of pace), so the relay's figures there could not be judged.  This
 * costs a few microseconds per frame: one thread, epoll, non-blocking sockets, libc only.
 * bench/realtime.py compiles it at run time:  gcc -O2 -o WORKDIR/wsload bench/wsload.c
 *
 *   wsload echo --port P       the echo upstream (port 0: any), prints "ready on http://..."
 *   wsload load --url ws://HOST:PORT/PATH?QUERY --sessions N --seconds S --warmup W [--key K]
 *   wsload hold --url URL --sessions N [--key K]    N idle sessions until stdin closes
 *   wsload churn --url URL --sessions N [--key K]   N sessions opened and closed, 100 at a time
 *
 * What each mode does and prints is in bench/README.md ("The realtime bench").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FRAME_NS 20000000LL          /* 20 ms of audio per append */
#define LATE_NS 5000000LL            /* a send this far behind its schedule is late */
#define STRAGGLERS_NS 500000000LL    /* answers still awaited after the last send */
#define OPEN_TIMEOUT_NS 60000000000LL
#define CLOSE_TIMEOUT_NS 5000000000LL
#define SWEEP_NS 100000000LL         /* how often open and close timeouts are checked */
#define IN_FLIGHT 100                /* handshakes at a time (churn: sessions at a time) */
#define MAX_MESSAGE (256u << 20)
#define READ_CHUNK 8192
#define GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* ---------------------------------------------------------------------------- utilities */

static void die(const char *format, ...) {
    va_list args;
    va_start(args, format);
    fputs("wsload: ", stderr);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
    exit(1);
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static uint64_t random_state;

static uint64_t random64(void) { /* xorshift64*: mask keys and handshake keys */
    random_state ^= random_state >> 12;
    random_state ^= random_state << 25;
    random_state ^= random_state >> 27;
    return random_state * 0x2545F4914F6CDD1DULL;
}

static void *grow(void *p, size_t size) {
    void *q = realloc(p, size);
    if (!q) die("out of memory");
    return q;
}

/* A byte buffer read from at off, appended to at len. */
struct buf {
    uint8_t *p;
    size_t off, len, cap;
};

static void buf_reserve(struct buf *b, size_t free_bytes) {
    if (b->cap - b->len >= free_bytes) return;
    if (b->off) {
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (b->cap - b->len >= free_bytes) return;
    size_t cap = b->cap ? b->cap : READ_CHUNK;
    while (cap - b->len < free_bytes) cap *= 2;
    b->p = grow(b->p, cap);
    b->cap = cap;
}

static void buf_append(struct buf *b, const void *data, size_t n) {
    buf_reserve(b, n);
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static size_t buf_pending(const struct buf *b) { return b->len - b->off; }

static void buf_free(struct buf *b) {
    free(b->p);
    *b = (struct buf){0};
}

/* --------------------------------------------------------------------- SHA-1 and base64 */

static uint32_t rotl(uint32_t x, int n) { return x << n | x >> (32 - n); }

static void sha1(const uint8_t *message, size_t len, uint8_t digest[20]) {
    size_t padded = (len + 8) / 64 * 64 + 64;
    uint8_t *m = calloc(padded, 1);
    if (!m) die("out of memory");
    memcpy(m, message, len);
    m[len] = 0x80;
    for (int i = 0; i < 8; i++) m[padded - 1 - i] = (uint8_t)((uint64_t)len * 8 >> (8 * i));
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    for (size_t block = 0; block < padded; block += 64) {
        uint32_t w[80];
        for (int t = 0; t < 16; t++) {
            const uint8_t *q = m + block + 4 * t;
            w[t] = (uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3];
        }
        for (int t = 16; t < 80; t++) w[t] = rotl(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int t = 0; t < 80; t++) {
            uint32_t f, k;
            if (t < 20) f = (b & c) | (~b & d), k = 0x5A827999;
            else if (t < 40) f = b ^ c ^ d, k = 0x6ED9EBA1;
            else if (t < 60) f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDC;
            else f = b ^ c ^ d, k = 0xCA62C1D6;
            uint32_t next = rotl(a, 5) + f + e + k + w[t];
            e = d, d = c, c = rotl(b, 30), b = a, a = next;
        }
        h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
    }
    free(m);
    for (int i = 0; i < 20; i++) digest[i] = (uint8_t)(h[i / 4] >> (24 - 8 * (i % 4)));
}

static size_t base64(const uint8_t *in, size_t n, char *out) {
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n) v |= in[i + 2];
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
        out[o++] = i + 1 < n ? alphabet[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? alphabet[v & 63] : '=';
    }
    out[o] = 0;
    return o;
}

/* Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 section 4.2.2): 28 chars + NUL. */
static void websocket_accept(const char *key, size_t key_len, char accept[29]) {
    char joined[256];
    if (key_len > sizeof joined - sizeof GUID) key_len = sizeof joined - sizeof GUID;
    memcpy(joined, key, key_len);
    memcpy(joined + key_len, GUID, sizeof GUID - 1);
    uint8_t digest[20];
    sha1((const uint8_t *)joined, key_len + sizeof GUID - 1, digest);
    base64(digest, 20, accept);
}

/* The value of a header in a NUL-terminated head, or NULL; its length in *len. */
static const char *header_value(const char *head, const char *name, size_t *len) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\r\n%s:", name);
    const char *found = strcasestr(head, pattern);
    if (!found) return NULL;
    found += strlen(pattern);
    while (*found == ' ' || *found == '\t') found++;
    const char *end = strstr(found, "\r\n");
    if (!end) return NULL;
    while (end > found && (end[-1] == ' ' || end[-1] == '\t')) end--;
    *len = (size_t)(end - found);
    return found;
}

/* ------------------------------------------------------------------------------- frames */

enum { CONTINUATION = 0, TEXT = 1, BINARY = 2, CLOSE = 8, PING = 9, PONG = 10 };

struct frame {
    int fin, opcode, masked;
    uint8_t key[4];
    uint64_t len;
    size_t header;
};

/* 1: a whole frame is in p[0..n), 0: more bytes needed, -1: longer than MAX_MESSAGE. */
static int frame_parse(const uint8_t *p, size_t n, struct frame *f) {
    if (n < 2) return 0;
    f->fin = p[0] >> 7;
    f->opcode = p[0] & 15;
    f->masked = p[1] >> 7;
    uint64_t len = p[1] & 127;
    size_t header = 2;
    if (len == 126) {
        if (n < 4) return 0;
        len = (uint64_t)p[2] << 8 | p[3];
        header = 4;
    } else if (len == 127) {
        if (n < 10) return 0;
        len = 0;
        for (int i = 0; i < 8; i++) len = len << 8 | p[2 + i];
        header = 10;
    }
    if (len > MAX_MESSAGE) return -1;
    if (f->masked) {
        if (n < header + 4) return 0;
        memcpy(f->key, p + header, 4);
        header += 4;
    }
    f->len = len;
    f->header = header;
    return n >= header + len;
}

static size_t frame_header(uint8_t *h, int opcode, uint64_t len, const uint8_t *key) {
    size_t n = 0;
    uint8_t mask_bit = key ? 0x80 : 0;
    h[n++] = (uint8_t)(0x80 | opcode);
    if (len < 126) {
        h[n++] = (uint8_t)(mask_bit | len);
    } else if (len < 65536) {
        h[n++] = mask_bit | 126;
        h[n++] = (uint8_t)(len >> 8);
        h[n++] = (uint8_t)len;
    } else {
        h[n++] = mask_bit | 127;
        for (int i = 7; i >= 0; i--) h[n++] = (uint8_t)(len >> (8 * i));
    }
    if (key) {
        memcpy(h + n, key, 4);
        n += 4;
    }
    return n;
}

static void mask(uint8_t *p, size_t len, const uint8_t key[4]) {
    uint8_t key8[8];
    for (int i = 0; i < 8; i++) key8[i] = key[i & 3];
    uint64_t k, v;
    memcpy(&k, key8, 8);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        memcpy(&v, p + i, 8);
        v ^= k;
        memcpy(p + i, &v, 8);
    }
    for (; i < len; i++) p[i] ^= key[i & 3];
}

/* --------------------------------------------------------------------------- connections */

enum state {
    CONNECTING,   /* client: TCP connect in progress */
    HANDSHAKING,  /* upgrade request sent (client) or awaited (echo) */
    OPENING,      /* client: upgraded, waiting for the first message (session.created) */
    STREAMING,    /* load: sending appends on schedule */
    DRAINING,     /* load: last append sent, waiting for stragglers */
    IDLE,         /* hold: open and quiet; echo: open */
    CLOSING,      /* client: close sent, waiting for the server's */
    DONE,
};

struct conn {
    int fd;
    enum state state;
    int server;           /* echo side: frames unmasked */
    int out_armed;        /* EPOLLOUT registered */
    int error;            /* errno of a failed send, handled once the event is done */
    int close_when_flushed;
    struct buf in, out, message;
    int message_opcode;   /* of a fragmented message being gathered, 0 when none */
    char accept[29];      /* client: the Sec-WebSocket-Accept expected */
    int64_t deadline;     /* open or close timeout */
    int64_t due, end, measure_from;
};

static int epoll_fd;
static struct buf wire; /* scratch: a frame being built */

static void watch(struct conn *c, int op, uint32_t events) {
    struct epoll_event event = {.events = events, .data.ptr = c};
    if (epoll_ctl(epoll_fd, op, c->fd, &event) < 0) die("epoll_ctl: %s", strerror(errno));
}

static void arm_output(struct conn *c, int on) {
    if (c->out_armed == on) return;
    c->out_armed = on;
    watch(c, EPOLL_CTL_MOD, EPOLLIN | (on ? EPOLLOUT : 0));
}

/* Send now what the socket takes, queue the rest; a failure is left in c->error. */
static void conn_send(struct conn *c, const uint8_t *data, size_t n) {
    if (c->error || c->fd < 0) return;
    size_t sent = 0;
    if (!buf_pending(&c->out)) {
        ssize_t w = send(c->fd, data, n, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EINTR) {
            c->error = errno;
            return;
        }
        sent = w < 0 ? 0 : (size_t)w;
    }
    if (sent < n) {
        buf_append(&c->out, data + sent, n - sent);
        arm_output(c, 1);
    }
}

static void conn_flush(struct conn *c) {
    while (buf_pending(&c->out)) {
        ssize_t w = send(c->fd, c->out.p + c->out.off, buf_pending(&c->out), MSG_NOSIGNAL);
        if (w < 0) {
            if (errno != EAGAIN && errno != EINTR) c->error = errno;
            return;
        }
        c->out.off += (size_t)w;
    }
    c->out.off = c->out.len = 0;
    arm_output(c, 0);
}

/* Client frames are masked with a fresh key, the echo's are not (RFC 6455 section 5.3). */
static void send_frame(struct conn *c, int opcode, const uint8_t *payload, size_t n) {
    uint8_t header[14], key[4];
    uint32_t r = (uint32_t)random64();
    memcpy(key, &r, 4);
    size_t h = frame_header(header, opcode, n, c->server ? NULL : key);
    wire.off = wire.len = 0;
    buf_append(&wire, header, h);
    buf_append(&wire, payload, n);
    if (!c->server) mask(wire.p + h, n, key);
    conn_send(c, wire.p, wire.len);
}

/* One read; 0 on end of stream or error. The buffer keeps a spare byte for a NUL. */
static int conn_read(struct conn *c) {
    buf_reserve(&c->in, READ_CHUNK + 1);
    ssize_t r = recv(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len - 1, 0);
    if (r > 0) {
        c->in.len += (size_t)r;
        return 1;
    }
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return 1;
    if (r < 0) c->error = errno;
    return 0;
}

static void conn_close(struct conn *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = DONE;
    buf_free(&c->in);
    buf_free(&c->out);
    buf_free(&c->message);
}

/* The whole head of an HTTP message in c->in, NUL-terminated, and its length; or NULL. */
static char *http_head(struct conn *c, size_t *len) {
    char *head = (char *)c->in.p + c->in.off;
    c->in.p[c->in.len] = 0;
    char *end = strstr(head, "\r\n\r\n");
    if (!end) return NULL;
    end[2] = 0; /* the last header line keeps its CRLF for header_value */
    *len = (size_t)(end + 4 - head);
    return head;
}

/* Handlers of the mode at hand: a whole message, a close frame, a lost connection. */
static void (*on_message)(struct conn *c, int opcode, uint8_t *payload, size_t n);
static void (*on_close_frame)(struct conn *c, const uint8_t *payload, size_t n);
static void (*on_lost)(struct conn *c, const char *why);

static void protocol_error(struct conn *c, int code, const char *why) {
    uint8_t payload[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    send_frame(c, CLOSE, payload, 2);
    on_lost(c, why);
}

static void handle_frame(struct conn *c, const struct frame *f, uint8_t *payload) {
    switch (f->opcode) {
    case CONTINUATION:
        if (!c->message_opcode) {
            protocol_error(c, 1002, "continuation out of a message");
            return;
        }
        if (buf_pending(&c->message) + f->len > MAX_MESSAGE) {
            protocol_error(c, 1009, "message too big");
            return;
        }
        buf_append(&c->message, payload, f->len);
        if (f->fin) {
            int opcode = c->message_opcode;
            size_t len = buf_pending(&c->message);
            c->message_opcode = 0;
            c->message.off = c->message.len = 0; /* its bytes stay put until the next message */
            on_message(c, opcode, c->message.p, len);
        }
        return;
    case TEXT:
    case BINARY:
        if (c->message_opcode) {
            protocol_error(c, 1002, "message inside a message");
            return;
        }
        if (f->fin) {
            on_message(c, f->opcode, payload, f->len);
            return;
        }
        c->message_opcode = f->opcode;
        c->message.off = c->message.len = 0;
        buf_append(&c->message, payload, f->len);
        return;
    case CLOSE:
        on_close_frame(c, payload, f->len);
        return;
    case PING:
        send_frame(c, PONG, payload, f->len);
        return;
    case PONG:
        return;
    default:
        protocol_error(c, 1002, "unknown opcode");
        return;
    }
}

/* Every whole frame in c->in, in order; stops when a handler ends or closes the connection. */
static void handle_input(struct conn *c) {
    for (;;) {
        struct frame f;
        uint8_t *p = c->in.p + c->in.off;
        int whole = frame_parse(p, buf_pending(&c->in), &f);
        if (whole < 0) {
            protocol_error(c, 1009, "frame too big");
            return;
        }
        if (!whole) break;
        uint8_t *payload = p + f.header;
        if (f.masked) mask(payload, f.len, f.key);
        c->in.off += f.header + f.len;
        handle_frame(c, &f, payload);
        if (c->state == DONE || c->close_when_flushed) return; /* nothing after a close */
    }
    if (c->in.off == c->in.len) c->in.off = c->in.len = 0;
}

/* After an event: a failed send ends the connection, so does a close once flushed. */
static void settle(struct conn *c) {
    if (c->state == DONE) return;
    if (c->error) on_lost(c, strerror(c->error));
    else if (c->close_when_flushed && !buf_pending(&c->out)) on_lost(c, NULL);
}

static void set_nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static int epoll_wait_until(struct epoll_event *events, int max, int64_t wake) {
    int64_t wait = wake - now_ns();
    if (wait < 0) wait = 0;
    struct timespec timeout = {wait / 1000000000LL, wait % 1000000000LL};
    int n = epoll_pwait2(epoll_fd, events, max, &timeout, NULL);
    if (n < 0 && errno != EINTR) die("epoll_pwait2: %s", strerror(errno));
    return n < 0 ? 0 : n;
}

/* ------------------------------------------------------------------------ the echo upstream */

static const char SESSION_CREATED[] = "{\"type\":\"session.created\",\"event_id\":\"e0\",\"session\":{}}";
static const char APPEND[] = "input_audio_buffer.append";
static const char DELTA[] = "response.output_audio.delta";
static struct buf reply;

/* The first append's type becomes an output delta, its first "audio": a "delta": */
static void echo_message(struct conn *c, int opcode, uint8_t *payload, size_t n) {
    reply.off = reply.len = 0;
    uint8_t *type = memmem(payload, n, APPEND, sizeof APPEND - 1);
    if (type) {
        buf_append(&reply, payload, (size_t)(type - payload));
        buf_append(&reply, DELTA, sizeof DELTA - 1);
        size_t rest = (size_t)(type - payload) + sizeof APPEND - 1;
        buf_append(&reply, payload + rest, n - rest);
    } else {
        buf_append(&reply, payload, n);
    }
    uint8_t *audio = memmem(reply.p, reply.len, "\"audio\":", 8);
    if (audio) memcpy(audio, "\"delta\":", 8);
    send_frame(c, opcode, reply.p, reply.len);
}

static void echo_close_frame(struct conn *c, const uint8_t *payload, size_t n) {
    if (c->close_when_flushed) return;
    send_frame(c, CLOSE, payload, n < 2 ? n : 2);
    c->close_when_flushed = 1;
}

static void echo_lost(struct conn *c, const char *why) {
    (void)why;
    conn_close(c); /* freed by the event loop, once the event is handled */
}

static void echo_handshake(struct conn *c) {
    size_t head_len, key_len;
    char *head = http_head(c, &head_len);
    if (!head) {
        if (buf_pending(&c->in) > 65536) echo_lost(c, "head too long");
        return;
    }
    const char *key = header_value(head, "Sec-WebSocket-Key", &key_len);
    if (!key) {
        static const char refusal[] =
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        conn_send(c, (const uint8_t *)refusal, sizeof refusal - 1);
        c->close_when_flushed = 1;
        c->state = IDLE;
        c->in.off = c->in.len;
        return;
    }
    char accept[29], response[256];
    websocket_accept(key, key_len, accept);
    int n = snprintf(response, sizeof response,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", accept);
    uint8_t header[14];
    size_t h = frame_header(header, TEXT, sizeof SESSION_CREATED - 1, NULL);
    struct buf opening = {0};
    buf_append(&opening, response, (size_t)n);
    buf_append(&opening, header, h);
    buf_append(&opening, SESSION_CREATED, sizeof SESSION_CREATED - 1);
    conn_send(c, opening.p, opening.len);
    buf_free(&opening);
    c->in.off += head_len;
    c->state = IDLE;
    handle_input(c);
}

static _Noreturn void echo(int port) {
    on_message = echo_message;
    on_close_frame = echo_close_frame;
    on_lost = echo_lost;
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&address, sizeof address) < 0)
        die("bind: %s", strerror(errno));
    if (listen(listener, 4096) < 0) die("listen: %s", strerror(errno));
    socklen_t size = sizeof address;
    getsockname(listener, (struct sockaddr *)&address, &size);
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listener, &event);
    printf("ready on http://127.0.0.1:%d\n", ntohs(address.sin_port));
    fflush(stdout);
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait_until(events, 256, now_ns() + 3600 * 1000000000LL);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    set_nodelay(fd);
                    c = calloc(1, sizeof *c);
                    if (!c) die("out of memory");
                    *c = (struct conn){.fd = fd, .state = HANDSHAKING, .server = 1};
                    watch(c, EPOLL_CTL_ADD, EPOLLIN);
                }
                if (errno == EMFILE || errno == ENFILE) fprintf(stderr, "accept: %s\n", strerror(errno));
                continue;
            }
            if (events[i].events & EPOLLOUT) conn_flush(c);
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                if (!conn_read(c)) echo_lost(c, "connection closed");
                else if (c->state == HANDSHAKING) echo_handshake(c);
                else if (!c->close_when_flushed) handle_input(c);
                else c->in.off = c->in.len = 0; /* after a close: nothing more is read */
            }
            settle(c);
            if (c->state == DONE) free(c);
        }
    }
}

/* ------------------------------------------------------------------------------ the client */

enum mode { LOAD, HOLD, CHURN };

static struct {
    enum mode mode;
    char host[256], target[2048];
    struct sockaddr_storage address;
    socklen_t address_len;
    const char *key;
    int sessions;
    double seconds, warmup;
} run;

static struct conn *sessions;
static int started, opening, opened, finished, failed;
static char *failures[3];
static int announced, stdin_open = 1;

/* Load's figures: round trips (ns) of appends sent after warmup, sends, late sends. */
static int64_t *rtts;
static size_t rtt_count, rtt_cap;
static long frames_sent, late_sends;

/* Load's sessions by the time of their next send (or end of draining): a binary heap. */
static struct conn **heap;
static size_t heap_len;

static void heap_push(struct conn *c) {
    size_t i = heap_len++;
    while (i) {
        size_t parent = (i - 1) / 2;
        if (heap[parent]->due <= c->due) break;
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = c;
}

static struct conn *heap_pop(void) {
    struct conn *top = heap[0], *last = heap[--heap_len];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= heap_len) break;
        if (child + 1 < heap_len && heap[child + 1]->due < heap[child]->due) child++;
        if (last->due <= heap[child]->due) break;
        heap[i] = heap[child];
        i = child;
    }
    if (heap_len) heap[i] = last;
    return top;
}

static void parse_url(const char *url) {
    if (strncmp(url, "ws://", 5)) die("--url must start with ws://: %s", url);
    const char *host = url + 5, *slash = strchr(host, '/');
    size_t host_len = slash ? (size_t)(slash - host) : strlen(host);
    if (host_len >= sizeof run.host) die("host too long");
    memcpy(run.host, host, host_len);
    snprintf(run.target, sizeof run.target, "%s", slash ? slash : "/");
    char name[256], *colon = strrchr(run.host, ':');
    const char *port = colon ? colon + 1 : "80";
    size_t name_len = colon ? (size_t)(colon - run.host) : host_len;
    memcpy(name, run.host, name_len);
    name[name_len] = 0;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *found;
    int error = getaddrinfo(name, port, &hints, &found);
    if (error) die("%s: %s", run.host, gai_strerror(error));
    memcpy(&run.address, found->ai_addr, found->ai_addrlen);
    run.address_len = found->ai_addrlen;
    freeaddrinfo(found);
}

/* A session is over: ``failure`` (NULL when it ended well) is counted and the first kept. */
static void finish(struct conn *c, const char *failure) {
    if (c->state == DONE) return;
    opening -= c->state <= OPENING;
    conn_close(c);
    finished++;
    if (failure) {
        if (run.mode == HOLD && !announced) die("hold: a session failed to open: %s", failure);
        if (failed < 3) failures[failed] = strdup(failure);
        failed++;
    }
}

static void client_lost(struct conn *c, const char *why) {
    int fine = c->state == CLOSING || c->state == DRAINING;
    finish(c, fine ? NULL : why ? why : "connection closed");
}

static void start_closing(struct conn *c) {
    uint8_t code[2] = {1000 >> 8, 1000 & 255};
    send_frame(c, CLOSE, code, 2);
    c->state = CLOSING;
    c->deadline = now_ns() + CLOSE_TIMEOUT_NS;
}

static void client_close_frame(struct conn *c, const uint8_t *payload, size_t n) {
    if (c->state == CLOSING) {
        finish(c, NULL);
        return;
    }
    char why[160];
    int code = n >= 2 ? payload[0] << 8 | payload[1] : 1005;
    int reason = n > 2 ? (int)(n - 2 < 100 ? n - 2 : 100) : 0;
    snprintf(why, sizeof why, "closed by the server: %d %.*s", code, reason, payload + 2);
    send_frame(c, CLOSE, payload, n < 2 ? n : 2);
    client_lost(c, why);
}

static void record_round_trip(const uint8_t *payload, size_t n, int64_t measure_from) {
    /* LiteLLM re-encodes each event with ", " and ": " separators. */
    const uint8_t *end = payload + n, *at = memmem(payload, n, "\"event_id\"", 10);
    if (!at) return;
    const uint8_t *quote = memchr(at + 10, '"', (size_t)(end - at - 10));
    if (!quote) return;
    int64_t sent = 0;
    const uint8_t *digit = quote + 1;
    for (; digit < end && *digit >= '0' && *digit <= '9'; digit++) sent = sent * 10 + (*digit - '0');
    if (digit == quote + 1 || digit == end || *digit != '"' || sent < measure_from) return;
    if (rtt_count == rtt_cap) {
        rtt_cap = rtt_cap ? 2 * rtt_cap : 65536;
        rtts = grow(rtts, rtt_cap * sizeof *rtts);
    }
    rtts[rtt_count++] = now_ns() - sent;
}

static void client_message(struct conn *c, int opcode, uint8_t *payload, size_t n) {
    if (c->state == STREAMING || c->state == DRAINING) {
        if (opcode == TEXT) record_round_trip(payload, n, c->measure_from);
        return;
    }
    if (c->state != OPENING) return;
    /* The first message (session.created): the session is open. */
    opening--;
    opened++;
    if (run.mode == CHURN) {
        start_closing(c);
    } else if (run.mode == HOLD) {
        c->state = IDLE;
        if (opened == run.sessions) {
            puts("open");
            fflush(stdout);
            announced = 1;
        }
    } else {
        int64_t now = now_ns();
        c->state = STREAMING;
        c->due = now;
        c->end = now + (int64_t)(run.seconds * 1e9);
        c->measure_from = now + (int64_t)(run.warmup * 1e9);
        heap_push(c);
    }
}

static void start_session(struct conn *c) {
    *c = (struct conn){.state = CONNECTING, .deadline = now_ns() + OPEN_TIMEOUT_NS};
    started++;
    opening++;
    c->fd = socket(run.address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        finish(c, strerror(errno));
        return;
    }
    set_nodelay(c->fd);
    if (connect(c->fd, (struct sockaddr *)&run.address, run.address_len) < 0 && errno != EINPROGRESS) {
        char why[128];
        snprintf(why, sizeof why, "connect: %s", strerror(errno));
        finish(c, why);
        return;
    }
    watch(c, EPOLL_CTL_ADD, EPOLLOUT);
}

static void send_upgrade(struct conn *c) {
    int error = 0;
    socklen_t size = sizeof error;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &size);
    if (error) {
        char why[128];
        snprintf(why, sizeof why, "connect: %s", strerror(error));
        finish(c, why);
        return;
    }
    uint64_t nonce[2] = {random64(), random64()};
    char key[25], request[4096];
    base64((const uint8_t *)nonce, 16, key);
    websocket_accept(key, 24, c->accept);
    int n = snprintf(request, sizeof request,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s%s%s\r\n",
                     run.target, run.host, key, run.key ? "Authorization: Bearer " : "",
                     run.key ? run.key : "", run.key ? "\r\n" : "");
    if (n >= (int)sizeof request) die("--url or --key too long");
    c->state = HANDSHAKING;
    c->out_armed = 1; /* registered for the connect: now for input (and output if queued) */
    arm_output(c, 0);
    conn_send(c, (const uint8_t *)request, (size_t)n);
}

static void read_upgrade(struct conn *c) {
    size_t head_len, accept_len;
    char *head = http_head(c, &head_len);
    if (!head) return;
    if (strncmp(head, "HTTP/1.1 101", 12)) {
        char why[160];
        snprintf(why, sizeof why, "upgrade refused: %.*s", (int)strcspn(head, "\r\n"), head);
        finish(c, why);
        return;
    }
    const char *accept = header_value(head, "Sec-WebSocket-Accept", &accept_len);
    if (!accept || accept_len != 28 || memcmp(accept, c->accept, 28)) {
        finish(c, "upgrade answered with a wrong Sec-WebSocket-Accept");
        return;
    }
    c->in.off += head_len;
    c->state = OPENING;
    handle_input(c);
}

/* Load's sessions start staggered over 20 ms; no mode has more than IN_FLIGHT handshakes
 * going (1,000 connects at once overflow a listen backlog of 50, Twisted's default, and
 * the kernel's SYN-ACK retries then take seconds). Churn runs IN_FLIGHT whole sessions. */
static int64_t start_more(int64_t t0) {
    while (started < run.sessions) {
        int64_t due = run.mode == LOAD ? t0 + started * FRAME_NS / run.sessions : t0;
        if ((run.mode == CHURN ? started - finished : opening) >= IN_FLIGHT) return INT64_MAX;
        if (due > now_ns()) return due;
        start_session(&sessions[started]);
    }
    return INT64_MAX;
}

static void client_event(struct conn *c, uint32_t events) {
    if (c->state == CONNECTING) {
        send_upgrade(c);
    } else {
        if (events & EPOLLOUT) conn_flush(c);
        if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
            if (!conn_read(c)) {
                client_lost(c, c->error ? strerror(c->error) : "connection closed");
                return;
            }
            if (c->state == HANDSHAKING) read_upgrade(c);
            else handle_input(c);
        }
    }
    settle(c);
}

/* An append, stamped with its send time in its event id. */
static void send_append(struct conn *c) {
    static const char prefix[] = "{\"type\":\"input_audio_buffer.append\",\"event_id\":\"";
    static char frame[2048], suffix[1400];
    static size_t suffix_len;
    if (!suffix_len) {
        uint8_t silence[960] = {0}; /* 20 ms of pcm16 at 24 kHz */
        char audio[1281];
        base64(silence, sizeof silence, audio);
        suffix_len = (size_t)sprintf(suffix, "\",\"audio\":\"%s\"}", audio);
        memcpy(frame, prefix, sizeof prefix - 1);
    }
    int64_t now = now_ns();
    if (now - c->due > LATE_NS) late_sends++;
    char *at = frame + sizeof prefix - 1;
    at += sprintf(at, "%lld", (long long)now);
    memcpy(at, suffix, suffix_len);
    send_frame(c, TEXT, (const uint8_t *)frame, (size_t)(at - frame) + suffix_len);
    frames_sent++;
}

/* Load's appends, each session's on its absolute schedule; when the next one is due. */
static int64_t load_timers(void) {
    int64_t now = now_ns();
    while (heap_len && heap[0]->due <= now) {
        struct conn *c = heap_pop();
        if (c->state == STREAMING) {
            send_append(c);
            c->due += FRAME_NS;
            if (c->due >= c->end) {
                c->state = DRAINING;
                c->due = now_ns() + STRAGGLERS_NS;
            }
            heap_push(c);
        } else if (c->state == DRAINING) {
            start_closing(c);
        }
        settle(c);
    } /* only what was due on entry: input is read between batches even when behind */
    return heap_len ? heap[0]->due : INT64_MAX;
}

static void sweep_timeouts(int64_t now) {
    for (int i = 0; i < started; i++) {
        struct conn *c = &sessions[i];
        static const char *const stalled[] = {"timed out connecting", "timed out upgrading",
                                              "timed out awaiting the first message"};
        if ((c->state > OPENING && c->state != CLOSING) || c->deadline > now) continue;
        finish(c, c->state == CLOSING ? NULL : stalled[c->state]);
    }
}

static void release_held(void) {
    char scrap[256];
    if (read(0, scrap, sizeof scrap) > 0) return;
    stdin_open = 0;
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, 0, NULL);
    for (int i = 0; i < started; i++)
        if (sessions[i].state == IDLE) {
            start_closing(&sessions[i]);
            settle(&sessions[i]);
        }
}

static int compare_rtt(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void print_percentile(const char *name, double p) {
    if (!rtt_count) {
        printf(", \"%s\": null", name);
        return;
    }
    size_t i = (size_t)(rtt_count * p);
    if (i >= rtt_count) i = rtt_count - 1;
    printf(", \"%s\": %.4f", name, rtts[i] / 1e6);
}

static void print_json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') printf("\\%c", *s);
        else if ((unsigned char)*s < 32) printf("\\u%04x", *s);
        else putchar(*s);
    }
    putchar('"');
}

static void print_load(int64_t t0) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    double cpu = (double)usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 +
                 (double)usage.ru_stime.tv_sec + usage.ru_stime.tv_usec / 1e6;
    qsort(rtts, rtt_count, sizeof *rtts, compare_rtt);
    long expected = (long)(run.sessions * (run.seconds - run.warmup) * 1e9 / FRAME_NS);
    printf("{\"frames\": %zu, \"frames_expected\": %ld, \"frames_sent\": %ld, \"failures\": [",
           rtt_count, expected, frames_sent);
    for (int i = 0; i < failed && i < 3; i++) {
        if (i) printf(", ");
        print_json_string(failures[i]);
    }
    printf("], \"failed_sessions\": %d", failed);
    print_percentile("p50_ms", 0.5);
    print_percentile("p99_ms", 0.99);
    printf(", \"late_sends\": %ld, \"client_cpu_percent\": %.1f}\n", late_sends,
           100 * cpu / ((now_ns() - t0) / 1e9));
}

static int client(void) {
    on_message = client_message;
    on_close_frame = client_close_frame;
    on_lost = client_lost;
    sessions = calloc((size_t)run.sessions, sizeof *sessions);
    heap = calloc((size_t)run.sessions, sizeof *heap);
    if (!sessions || !heap) die("out of memory");
    int64_t t0 = now_ns(), next_sweep = t0 + SWEEP_NS;
    struct epoll_event events[512];
    while (finished < run.sessions) {
        int64_t wake = start_more(t0), sends = run.mode == LOAD ? load_timers() : INT64_MAX;
        if (finished == run.sessions) break;
        if (sends < wake) wake = sends;
        if (next_sweep < wake) wake = next_sweep;
        if (announced && stdin_open == 1) {
            struct epoll_event event = {.events = EPOLLIN, .data.ptr = &run};
            if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, 0, &event) < 0) release_held(); /* a file */
            else stdin_open = 2;
        }
        int n = epoll_wait_until(events, 512, wake);
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == &run) release_held();
            else client_event(events[i].data.ptr, events[i].events);
        }
        int64_t now = now_ns();
        if (now >= next_sweep) {
            sweep_timeouts(now);
            next_sweep = now + SWEEP_NS;
        }
    }
    if (run.mode == LOAD) print_load(t0);
    if (run.mode == CHURN) printf("{\"failed\": %d}\n", failed);
    if (run.mode == HOLD && failed) fprintf(stderr, "wsload: %d held sessions lost\n", failed);
    return 0;
}

/* ---------------------------------------------------------------------------------- main */

static void usage(void) {
    die("usage: wsload echo --port P | wsload load --url URL --sessions N --seconds S "
        "--warmup W [--key K] | wsload hold|churn --url URL --sessions N [--key K]");
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    if (getrandom(&random_state, sizeof random_state, 0) != sizeof random_state || !random_state)
        random_state = (uint64_t)now_ns() | 1;
    struct rlimit files;
    getrlimit(RLIMIT_NOFILE, &files);
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
    epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    int port = -1;
    const char *url = NULL;
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *name = argv[i], *value = argv[i + 1];
        if (!strcmp(name, "--port")) port = atoi(value);
        else if (!strcmp(name, "--url")) url = value;
        else if (!strcmp(name, "--sessions")) run.sessions = atoi(value);
        else if (!strcmp(name, "--seconds")) run.seconds = atof(value);
        else if (!strcmp(name, "--warmup")) run.warmup = atof(value);
        else if (!strcmp(name, "--key")) run.key = *value ? value : NULL;
        else usage();
    }
    if (!strcmp(argv[1], "echo")) {
        if (port < 0) usage();
        echo(port);
    }
    if (!strcmp(argv[1], "load")) run.mode = LOAD;
    else if (!strcmp(argv[1], "hold")) run.mode = HOLD;
    else if (!strcmp(argv[1], "churn")) run.mode = CHURN;
    else usage();
    if (!url || run.sessions <= 0 || (run.mode == LOAD && run.seconds <= 0)) usage();
    parse_url(url);
    return client();
}

/*
 * test_timer.cpp - the reactor's timer heap and task queue, driven through
 * the public API: reactor_run() until a timer or task calls reactor_stop().
 *
 * reactor_init() is called once per process (up()). Every test leaves no
 * timer armed and no task queued behind it: the heap holds pointers to
 * these stack objects.
 */
#include <doctest/doctest.h>

#include "reactor.h"

#include <fcntl.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <random>
#include <string>
#include <thread>
#include <vector>

static void up()
{
    static bool done;
    if (!done) {
        REQUIRE(reactor_init() == 0);
        done = true;
    }
}

/* ---- timers ---- */

struct tmark {
    timer t;
    int id = 0;
    int fired = 0;
    std::vector<int> *log = nullptr;
};

static void on_fire(void *arg)
{
    tmark *m = (tmark *)arg;
    m->fired++;
    m->log->push_back(m->id);
}

static void stop_task_fn(void *)
{
    reactor_stop();
}

/* Stop from a task: the tests below are about tasks and timers, not
 * about stopping (that has its own test at the end of this file). */
static void on_stop(void *)
{
    static task t;
    t.fn = stop_task_fn;
    task_post(&t);
}

TEST_CASE("timer: many random expiries fire once each, in order; cancelled never, re-armed at the new time")
{
    up();
    const int N = 1000;
    std::mt19937 rng(4242);
    std::vector<tmark> m(N);
    std::vector<int> log;
    std::vector<uint64_t> when(N);
    std::vector<bool> live(N, true);

    uint64_t base = now_ms();
    for (int i = 0; i < N; i++) {
        m[i].id = i;
        m[i].log = &log;
        m[i].t.fn = on_fire;
        m[i].t.arg = &m[i];
        /* a few already in the past, most up to 60 ms ahead; ties happen */
        when[i] = base - 20 + rng() % 80;
        CHECK(!m[i].t.armed());
        timer_arm_at(&m[i].t, when[i]);
        CHECK(m[i].t.armed());
    }
    for (int i = 0; i < N; i += 3) {
        timer_cancel(&m[i].t);
        CHECK(!m[i].t.armed());
        live[i] = false;
    }
    timer_cancel(&m[0].t);   /* twice: harmless */
    for (int i = 1; i < N; i += 7) {
        /* re-arm armed timers in place, earlier or later; some cancelled ones again */
        when[i] = base - 20 + rng() % 80;
        timer_arm_at(&m[i].t, when[i]);
        CHECK(m[i].t.armed());
        live[i] = true;
    }

    timer stop;
    stop.fn = on_stop;
    timer_arm_at(&stop, base + 150);
    reactor_run();

    CHECK(!stop.armed());
    CHECK(now_ms() - base >= 150);
    int nlive = 0;
    for (int i = 0; i < N; i++) {
        CAPTURE(i);
        CHECK(m[i].fired == (live[i] ? 1 : 0));
        CHECK(!m[i].t.armed());
        nlive += live[i];
    }
    REQUIRE((int)log.size() == nlive);
    for (size_t k = 1; k < log.size(); k++) {
        CAPTURE(k);
        CHECK(when[log[k - 1]] <= when[log[k]]);
    }
    for (int i = 0; i < N; i++)
        timer_cancel(&m[i].t);
}

/* ---- the clock ---- */

static uint64_t pass_clock[2];

static void read_clock_twice(void *)
{
    pass_clock[0] = now_ms();
    usleep(20 * 1000);
    pass_clock[1] = now_ms();
    reactor_stop();
}

TEST_CASE("clock: within a loop pass now_ms() is the time the pass began; outside, it moves")
{
    up();
    uint64_t t0 = now_ms();
    usleep(20 * 1000);
    CHECK(now_ms() - t0 >= 20);
    task t;
    t.fn = read_clock_twice;
    task_post(&t);
    reactor_run();
    CHECK(pass_clock[0] >= t0 + 20);
    CHECK(pass_clock[1] == pass_clock[0]);
    CHECK(now_ms() - pass_clock[0] >= 20);
}

/* A handler dispatched after a long wait reads the time it was woken, not
 * the time the pass began: a timer it arms must not be due at once. */
struct clock_reader : io_handler {
    int fd = -1;
    uint64_t seen = 0, real = 0;
    void on_io(unsigned) override
    {
        char b;
        while (read(fd, &b, 1) == 1) {
        }
        seen = now_ms();
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        real = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
        reactor_stop();
    }
};

TEST_CASE("clock: a handler woken after a long wait sees the time it was woken")
{
    up();
    int p[2];
    REQUIRE(pipe2(p, O_NONBLOCK | O_CLOEXEC) == 0);
    clock_reader r;
    r.fd = p[0];
    REQUIRE(reactor_add(p[0], &r) == 0);
    uint64_t t0 = now_ms();
    std::thread writer([&] {
        usleep(60 * 1000);
        CHECK(write(p[1], "x", 1) == 1);
    });
    reactor_run();   /* waits in the backend for the byte */
    writer.join();
    reactor_del(p[0], &r);
    close(p[0]);
    close(p[1]);
    CHECK(r.seen - t0 >= 60);
    CHECK(r.real - r.seen <= 5);
}

TEST_CASE("timer: timer_arm fires after its delay, not before")
{
    up();
    std::vector<int> log;
    tmark a, b;
    a.id = 1;
    b.id = 2;
    a.log = b.log = &log;
    a.t.fn = b.t.fn = on_fire;
    a.t.arg = &a;
    b.t.arg = &b;
    uint64_t t0 = now_ms();
    timer_arm(&b.t, 40);
    timer_arm(&a.t, 20);
    CHECK(a.t.expire >= t0 + 20);
    CHECK(b.t.expire >= t0 + 40);
    timer stop;
    stop.fn = on_stop;
    timer_arm(&stop, 60);
    reactor_run();
    CHECK(log == std::vector<int>{1, 2});
    CHECK(now_ms() - t0 >= 60);
}

/* A timer that cancels another expired one and re-arms a third from its
 * callback: the cancelled one must not fire, the re-armed one fires at its
 * new time. */
struct chain {
    timer a, b, c;
    std::vector<char> log;
    int c_runs = 0;
};

static void chain_a(void *arg)
{
    chain *ch = (chain *)arg;
    ch->log.push_back('a');
    timer_cancel(&ch->b);
    timer_arm_at(&ch->c, ch->a.expire + 30);
}

static void chain_b(void *arg)
{
    ((chain *)arg)->log.push_back('b');
}

static void chain_c(void *arg)
{
    chain *ch = (chain *)arg;
    ch->log.push_back('c');
    /* periodic: re-arm itself twice */
    if (++ch->c_runs < 3)
        timer_arm_at(&ch->c, ch->c.expire + 5);
}

TEST_CASE("timer: callbacks may cancel and re-arm timers, including their own")
{
    up();
    chain ch;
    ch.a.fn = chain_a;
    ch.b.fn = chain_b;
    ch.c.fn = chain_c;
    ch.a.arg = ch.b.arg = ch.c.arg = &ch;
    uint64_t base = now_ms() - 10;   /* a and b are both due at once */
    timer_arm_at(&ch.a, base);
    timer_arm_at(&ch.b, base + 1);
    timer_arm_at(&ch.c, base + 2);   /* would fire right after b, but a moves it */
    timer stop;
    stop.fn = on_stop;
    timer_arm_at(&stop, base + 80);
    reactor_run();
    CHECK(std::string(ch.log.begin(), ch.log.end()) == "accc");
    CHECK(!ch.a.armed());
    CHECK(!ch.b.armed());
    CHECK(!ch.c.armed());
}

TEST_CASE("timer: expiries around the 64-bit wrap order by signed difference")
{
    up();
    /* Relative to each other these are MAX-10 < MAX-1 < MAX < 0 < 3: the
     * wrapped values come after, as if the clock had wrapped. All lie in
     * the past of now_ms(), so they fire at once, in that order. */
    const uint64_t vals[] = {3, UINT64_MAX, 0, UINT64_MAX - 10, UINT64_MAX - 1};
    const int order[] = {3, 4, 1, 2, 0};   /* indexes of vals, earliest first */
    std::vector<int> log;
    std::vector<tmark> m(5);
    for (int i = 0; i < 5; i++) {
        m[i].id = i;
        m[i].log = &log;
        m[i].t.fn = on_fire;
        m[i].t.arg = &m[i];
        timer_arm_at(&m[i].t, vals[i]);
    }
    timer stop;
    stop.fn = on_stop;
    timer_arm(&stop, 10);
    reactor_run();
    REQUIRE(log.size() == 5);
    for (int k = 0; k < 5; k++) {
        CAPTURE(k);
        CHECK(log[k] == order[k]);
    }
}

TEST_CASE("timer: a timer far ahead in unsigned terms but behind by signed difference fires now")
{
    up();
    /* now + 2^63 + 10^6 is 2^63 - 10^6 behind now as a signed difference */
    std::vector<int> log;
    tmark far, near;
    far.id = 1;
    near.id = 2;
    far.log = near.log = &log;
    far.t.fn = near.t.fn = on_fire;
    far.t.arg = &far;
    near.t.arg = &near;
    uint64_t now = now_ms();
    timer_arm_at(&far.t, now + (1ull << 63) + 1000000);
    timer_arm_at(&near.t, now + 20);
    timer stop;
    stop.fn = on_stop;
    timer_arm_at(&stop, now + 40);
    reactor_run();
    CHECK(log == std::vector<int>{1, 2});
    timer_cancel(&far.t);
    timer_cancel(&near.t);
}

/* ---- tasks ---- */

struct tcount {
    task t;
    int runs = 0;
    std::vector<char> *log = nullptr;
    char tag = '?';
    task *other = nullptr;      /* cancel or post this one when run */
    timer *arm = nullptr;       /* arm this timer (already due) when run */
};

static void count_fn(void *arg)
{
    tcount *c = (tcount *)arg;
    c->runs++;
    if (c->log)
        c->log->push_back(c->tag);
}

static void stop_task(void *)
{
    reactor_stop();
}

TEST_CASE("task: runs once per post; posting twice before it runs is one run")
{
    up();
    tcount a;
    a.t.fn = count_fn;
    a.t.arg = &a;
    task stop;
    stop.fn = stop_task;

    task_post(&a.t);
    CHECK(a.t.queued);
    task_post(&a.t);
    task_post(&stop);
    reactor_run();
    CHECK(a.runs == 1);
    CHECK(!a.t.queued);

    task_post(&a.t);
    task_post(&stop);
    reactor_run();
    CHECK(a.runs == 2);
    CHECK(!stop.queued);
}

TEST_CASE("task: tasks run in the order they were posted")
{
    up();
    std::vector<char> log;
    tcount x[4];
    const char tags[] = "wxyz";
    task stop;
    stop.fn = stop_task;
    for (int i = 0; i < 4; i++) {
        x[i].t.fn = count_fn;
        x[i].t.arg = &x[i];
        x[i].log = &log;
        x[i].tag = tags[i];
    }
    task_post(&x[2].t);
    task_post(&x[0].t);
    task_post(&x[3].t);
    task_post(&x[1].t);
    task_post(&stop);
    reactor_run();
    CHECK(std::string(log.begin(), log.end()) == "ywzx");
}

static void post_other(void *arg)
{
    tcount *c = (tcount *)arg;
    c->runs++;
    c->log->push_back(c->tag);
    task_post(c->other);
    timer_arm_at(c->arm, now_ms() - 1);
}

TEST_CASE("task: a task posted from a task runs in the next pass")
{
    up();
    /* A posts B and arms an already-due timer T. Timers run at the start of
     * each pass and tasks at its end, so if B runs in the next pass the
     * order is A T B; in the same pass it would be A B T. */
    std::vector<char> log;
    tcount a, b;
    timer tt;
    tt.fn = [](void *arg) { ((std::vector<char> *)arg)->push_back('T'); };
    tt.arg = &log;

    a.t.fn = post_other;
    a.t.arg = &a;
    a.log = &log;
    a.tag = 'A';
    a.other = &b.t;
    a.arm = &tt;
    b.t.fn = count_fn;
    b.t.arg = &b;
    b.log = &log;
    b.tag = 'B';

    timer stop;
    stop.fn = on_stop;
    timer_arm(&stop, 30);
    task_post(&a.t);
    reactor_run();
    CHECK(std::string(log.begin(), log.end()) == "ATB");
    CHECK(a.runs == 1);
    CHECK(b.runs == 1);
    CHECK(!tt.armed());
}

struct selfpost {
    task t;
    int runs = 0;
    int limit = 0;
    timer *tick;
    int ticks_seen_at[5] = {};
    int *ticks;
};

static void self_repost(void *arg)
{
    selfpost *s = (selfpost *)arg;
    if (s->runs < 5)
        s->ticks_seen_at[s->runs] = *s->ticks;
    if (++s->runs < s->limit)
        task_post(&s->t);
    /* a due timer each pass counts the passes */
    timer_arm_at(s->tick, now_ms() - 1);
}

static void tick_fn(void *arg)
{
    ++*(int *)arg;
}

TEST_CASE("task: a task re-posting itself runs once per pass and does not starve timers")
{
    up();
    int ticks = 0;
    timer tick;
    tick.fn = tick_fn;
    tick.arg = &ticks;
    selfpost s;
    s.t.fn = self_repost;
    s.t.arg = &s;
    s.limit = 5;
    s.tick = &tick;
    s.ticks = &ticks;
    timer stop;
    stop.fn = on_stop;
    timer_arm(&stop, 30);
    task_post(&s.t);
    reactor_run();
    CHECK(s.runs == 5);
    CHECK(ticks == 5);
    for (int i = 0; i < 5; i++) {
        CAPTURE(i);
        CHECK(s.ticks_seen_at[i] == i);   /* one timer pass between runs */
    }
    timer_cancel(&tick);
}

static void cancel_other(void *arg)
{
    tcount *c = (tcount *)arg;
    c->runs++;
    c->log->push_back(c->tag);
    task_cancel(c->other);
}

TEST_CASE("task: task_cancel removes a queued task, at the head, middle and tail")
{
    up();
    std::vector<char> log;
    tcount x[5];
    const char tags[] = "abcde";
    for (int i = 0; i < 5; i++) {
        x[i].t.fn = count_fn;
        x[i].t.arg = &x[i];
        x[i].log = &log;
        x[i].tag = tags[i];
        task_post(&x[i].t);
    }
    task_cancel(&x[0].t);
    task_cancel(&x[2].t);
    task_cancel(&x[4].t);
    CHECK(!x[0].t.queued);
    CHECK(!x[2].t.queued);
    task_cancel(&x[2].t);   /* not queued: nothing */
    task stop;
    stop.fn = stop_task;
    task_post(&stop);
    reactor_run();
    CHECK(std::string(log.begin(), log.end()) == "bd");
    CHECK(x[0].runs == 0);
    CHECK(x[1].runs == 1);
    CHECK(x[2].runs == 0);
    CHECK(x[3].runs == 1);
    CHECK(x[4].runs == 0);

    /* cancelled then posted again: runs */
    log.clear();
    task_post(&x[2].t);
    task_post(&stop);
    reactor_run();
    CHECK(std::string(log.begin(), log.end()) == "c");
}

TEST_CASE("task: a task may cancel a later task of the same batch")
{
    up();
    std::vector<char> log;
    tcount a, b, c;
    a.t.fn = cancel_other;
    a.t.arg = &a;
    a.log = &log;
    a.tag = 'a';
    a.other = &b.t;
    b.t.fn = count_fn;
    b.t.arg = &b;
    b.log = &log;
    b.tag = 'b';
    c.t.fn = count_fn;
    c.t.arg = &c;
    c.log = &log;
    c.tag = 'c';
    task stop;
    stop.fn = stop_task;
    task_post(&a.t);
    task_post(&b.t);
    task_post(&c.t);
    task_post(&stop);
    reactor_run();
    CHECK(std::string(log.begin(), log.end()) == "ac");
    CHECK(b.runs == 0);
    CHECK(!b.t.queued);
}

/* Regression: reactor_run() used to go on to backend_poll() with the
 * timeout of the next timer after a timer callback called reactor_stop(),
 * so a QUIT that drained early still waited for shutdown_timeout. */
static void stop_now_fn(void *)
{
    reactor_stop();
}

TEST_CASE("timer: reactor_stop() from a timer callback returns at once")
{
    up();
    timer a, far;
    a.fn = stop_now_fn;
    far.fn = [](void *) {};
    uint64_t t0 = now_ms();
    timer_arm(&a, 10);
    timer_arm(&far, 1500);
    reactor_run();
    uint64_t took = now_ms() - t0;
    timer_cancel(&far);
    CHECK(took < 500);
}

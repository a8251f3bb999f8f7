/* sender.c: UDP sends at a target rate from several processes (the eBPF capacity probe).
 *
 * usage: sender HOST PORT PROCS RATE DURATION_S fold|unfold|storm|accept
 *   RATE       total sends per second over all processes; 0 = as fast as possible
 *   fold       every send on one connected UDP socket per process
 *   unfold     the same, each send preceded by a write of a marker-like line (RS "[", as
 *              wire.py writes) to /dev/null: with kernel_join only writes to the real marker
 *              pipe are phase edges, so these sends still fold; with it off, each is a ring
 *              buffer record
 *   storm      each "send" is a new TCP connection to HOST:PORT (connect, one send, close):
 *              short-lived connections from every process, to a listener outside the
 *              traced tree (traffic to the tree's own listeners is not a service)
 *   accept     no sends: listen on HOST (any port), print the port, accept and close
 *              connections until killed (the storm's listener, started untraced)
 * Prints one JSON line: {"sends": N, "seconds": S, "procs": P} (S: first start to last end).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

enum mode { FOLD, UNFOLD, STORM };

/* storm: one connection, one send, closed */
static int connect_once(const struct sockaddr_in *sa, const char *payload, size_t len)
{
	int c = socket(AF_INET, SOCK_STREAM, 0);

	if (c < 0)
		return -1;
	if (connect(c, (const struct sockaddr *)sa, sizeof(*sa)) < 0 ||
	    send(c, payload, len, 0) < 0) {
		close(c);
		return -1;
	}
	close(c);
	return 0;
}

static void child(const char *host, int port, double rate, double duration, enum mode mode,
		  int out)
{
	static const char marker[] = "\x1e[\"bench\"]\n";
	char payload[16] = "svctrace-bench";
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	int s = socket(AF_INET, SOCK_DGRAM, 0), dn = open("/dev/null", O_WRONLY);
	long n = 0;
	double t0, t1, end;

	inet_pton(AF_INET, host, &sa.sin_addr);
	if (s < 0 || dn < 0 ||
	    (mode != STORM && connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0)) {
		perror("sender");
		_exit(1);
	}
	t0 = now();
	end = t0 + duration;
	for (;;) {
		double t = now();
		long batch = 256;
		if (t >= end)
			break;
		if (rate > 0) {
			long due = (long)((t - t0) * rate);
			if (due <= n) {
				struct timespec pause = {0, 100000}; /* 100 us */
				nanosleep(&pause, 0);
				continue;
			}
			batch = due - n < 1000 ? due - n : 1000;
		}
		for (long j = 0; j < batch; j++) {
			if (mode == UNFOLD && write(dn, marker, sizeof(marker) - 1) < 0)
				_exit(1);
			if (mode == STORM) {
				if (connect_once(&sa, payload, sizeof(payload)) < 0) {
					perror("sender: storm connect");
					_exit(1);
				}
			} else {
				send(s, payload, sizeof(payload), 0); /* a full receiver drops: still a send */
			}
			n++;
		}
	}
	t1 = now();
	dprintf(out, "%ld %.9f %.9f\n", n, t0, t1);
	_exit(0);
}

int main(int argc, char **argv)
{
	int fds[2], procs, port, listener;
	enum mode mode;
	double rate, duration, first = 1e300, last = 0;
	long total = 0;
	FILE *in;
	char line[256];

	if (argc != 7) {
		fprintf(stderr, "usage: %s HOST PORT PROCS RATE DURATION_S "
			"fold|unfold|storm|accept\n",
			argv[0]);
		return 2;
	}
	mode = !strcmp(argv[6], "unfold") ? UNFOLD : !strcmp(argv[6], "storm") ? STORM : FOLD;
	port = atoi(argv[2]);
	if (!strcmp(argv[6], "accept")) {
		struct sockaddr_in la = {.sin_family = AF_INET};
		socklen_t len = sizeof(la);

		inet_pton(AF_INET, argv[1], &la.sin_addr);
		listener = socket(AF_INET, SOCK_STREAM, 0);
		if (listener < 0 || bind(listener, (struct sockaddr *)&la, sizeof(la)) < 0 ||
		    listen(listener, 4096) < 0 ||
		    getsockname(listener, (struct sockaddr *)&la, &len) < 0) {
			perror("sender: listener");
			return 1;
		}
		printf("%d\n", ntohs(la.sin_port));
		fflush(stdout);
		for (;;) {
			int c = accept(listener, 0, 0);
			if (c >= 0)
				close(c);
		}
	}
	procs = atoi(argv[3]);
	rate = atof(argv[4]);
	duration = atof(argv[5]);
	if (procs < 1 || pipe(fds) < 0)
		return 2;
	for (int i = 0; i < procs; i++) {
		if (fork() == 0) {
			close(fds[0]);
			child(argv[1], port, rate / procs, duration, mode, fds[1]);
		}
	}
	close(fds[1]);
	in = fdopen(fds[0], "r");
	while (fgets(line, sizeof(line), in)) {
		long n;
		double t0, t1;
		if (sscanf(line, "%ld %lf %lf", &n, &t0, &t1) == 3) {
			total += n;
			first = t0 < first ? t0 : first;
			last = t1 > last ? t1 : last;
		}
	}
	while (wait(0) > 0)
		;
	printf("{\"sends\": %ld, \"seconds\": %.6f, \"procs\": %d}\n", total,
	       last > first ? last - first : 0.0, procs);
	return 0;
}

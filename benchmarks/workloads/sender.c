/* sender.c: UDP sends at a target rate from several processes (the eBPF capacity probe).
 *
 * usage: sender HOST PORT PROCS RATE DURATION_S fold|unfold
 *   RATE       total sends per second over all processes; 0 = as fast as possible
 *   unfold     precede every send with a write of a marker-like line (RS "[", as wire.py writes) to
 *              /dev/null: with kernel_join off svctrace's kernel side then cannot fold sends
 *              (one ring buffer record per send); with it on, only the marker pipe counts
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

static void child(const char *host, int port, double rate, double duration, int unfold, int out)
{
	static const char marker[] = "\x1e[\"bench\"]\n";
	char payload[16] = "svctrace-bench";
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	int s = socket(AF_INET, SOCK_DGRAM, 0), dn = open("/dev/null", O_WRONLY);
	long n = 0;
	double t0, t1, end;

	inet_pton(AF_INET, host, &sa.sin_addr);
	if (s < 0 || dn < 0 || connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
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
			if (unfold && write(dn, marker, sizeof(marker) - 1) < 0)
				_exit(1);
			send(s, payload, sizeof(payload), 0); /* a full receiver drops: still a send */
			n++;
		}
	}
	t1 = now();
	dprintf(out, "%ld %.9f %.9f\n", n, t0, t1);
	_exit(0);
}

int main(int argc, char **argv)
{
	int fds[2], procs;
	double rate, duration, first = 1e300, last = 0;
	long total = 0;
	FILE *in;
	char line[256];

	if (argc != 7) {
		fprintf(stderr, "usage: %s HOST PORT PROCS RATE DURATION_S fold|unfold\n", argv[0]);
		return 2;
	}
	procs = atoi(argv[3]);
	rate = atof(argv[4]);
	duration = atof(argv[5]);
	if (procs < 1 || pipe(fds) < 0)
		return 2;
	for (int i = 0; i < procs; i++) {
		if (fork() == 0) {
			close(fds[0]);
			child(argv[1], atoi(argv[2]), rate / procs, duration,
			      strcmp(argv[6], "unfold") == 0, fds[1]);
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

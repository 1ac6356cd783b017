/* The classic per-program syscall loop (what bpftool and bpftop pay per program):
 * BPF_PROG_GET_NEXT_ID -> BPF_PROG_GET_FD_BY_ID -> BPF_OBJ_GET_INFO_BY_FD -> close.
 *
 * usage: prog_loop PASSES [run]
 * With "run", every program is run once with BPF_PROG_TEST_RUN (untimed) before each timed
 * pass, as when programs ran between two samples: the pass then reads counters the CPUs
 * just wrote, which costs the kernel more than re-reading idle ones.
 * prints: "<programs> <best ns per program> <median ns per program>"
 */
#include <linux/bpf.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long sys_bpf(int cmd, union bpf_attr *attr, unsigned int size)
{
	return syscall(__NR_bpf, cmd, attr, size);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* An Ethernet + IPv4 + UDP frame with a zero payload: enough for skb and XDP test runs. */
static const unsigned char packet[64] = {
	0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00,
	0x45, 0x00, 0x00, 0x32, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00,
	0x7f, 0x00, 0x00, 0x01, 0x7f, 0x00, 0x00, 0x01,
	0x30, 0x39, 0x30, 0x39, 0x00, 0x1e, 0x00, 0x00,
};

/* Run every program once (programs that cannot be test-run are skipped). */
static void run_all(void)
{
	union bpf_attr attr;
	uint32_t id = 0;

	for (;;) {
		memset(&attr, 0, sizeof(attr));
		attr.start_id = id;
		if (sys_bpf(BPF_PROG_GET_NEXT_ID, &attr, sizeof(attr)))
			break;
		id = attr.next_id;
		memset(&attr, 0, sizeof(attr));
		attr.prog_id = id;
		int fd = sys_bpf(BPF_PROG_GET_FD_BY_ID, &attr, sizeof(attr));
		if (fd < 0)
			continue;
		memset(&attr, 0, sizeof(attr));
		attr.test.prog_fd = fd;
		attr.test.data_in = (uint64_t)(uintptr_t)packet;
		attr.test.data_size_in = sizeof(packet);
		attr.test.repeat = 1;
		sys_bpf(BPF_PROG_TEST_RUN, &attr, sizeof(attr));
		close(fd);
	}
}

/* One pass; returns the number of programs read. */
static long one_pass(uint64_t *checksum)
{
	union bpf_attr attr;
	struct bpf_prog_info info;
	uint32_t id = 0;
	long count = 0;

	for (;;) {
		memset(&attr, 0, sizeof(attr));
		attr.start_id = id;
		if (sys_bpf(BPF_PROG_GET_NEXT_ID, &attr, sizeof(attr)))
			break;
		id = attr.next_id;
		memset(&attr, 0, sizeof(attr));
		attr.prog_id = id;
		int fd = sys_bpf(BPF_PROG_GET_FD_BY_ID, &attr, sizeof(attr));
		if (fd < 0)
			continue;
		memset(&info, 0, sizeof(info));
		memset(&attr, 0, sizeof(attr));
		attr.info.bpf_fd = fd;
		attr.info.info_len = sizeof(info);
		attr.info.info = (uint64_t)(uintptr_t)&info;
		if (sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &attr, sizeof(attr)) == 0) {
			*checksum += info.run_cnt + info.run_time_ns;
			count++;
		}
		close(fd);
	}
	return count;
}

int main(int argc, char **argv)
{
	int passes = argc > 1 ? atoi(argv[1]) : 20;
	int run = argc > 2 && strcmp(argv[2], "run") == 0;
	uint64_t *per_prog = calloc(passes, sizeof(*per_prog));
	uint64_t checksum = 0;
	long programs = 0;

	if (!per_prog || passes < 1)
		return 2;
	one_pass(&checksum); /* warm-up */
	for (int i = 0; i < passes; i++) {
		if (run)
			run_all();
		uint64_t t0 = now_ns();
		programs = one_pass(&checksum);
		uint64_t dt = now_ns() - t0;
		per_prog[i] = programs ? dt / programs : 0;
	}
	qsort(per_prog, passes, sizeof(*per_prog), cmp_u64);
	printf("%ld %llu %llu\n", programs, (unsigned long long)per_prog[0],
	       (unsigned long long)per_prog[passes / 2]);
	free(per_prog);
	return checksum == 42; /* keep the loads alive */
}

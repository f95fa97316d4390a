/* ssh-agent's sign, from C: the anchor's client at the same concurrency as the gRPC load.
 * Each of CONNECTIONS threads keeps one agent connection and signs a 64-byte payload in a
 * closed loop for SECONDS (after a short warm-up); prints one JSON line (calls, errors, p50/p99 in µs, req/s).
 *   agent_sign SOCKET CONNECTIONS SECONDS */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static const char *sock_path;
static double seconds;
typedef struct { double *lat; size_t n, cap; int errors; } result_t;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int full(int fd, void *buf, size_t n, int writing) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = writing ? write(fd, (char *)buf + done, n - done) : read(fd, (char *)buf + done, n - done);
    if (r <= 0) return -1;
    done += (size_t)r;
  }
  return 0;
}

static unsigned char *message(int fd, uint32_t *len) {  /* one agent message: 4-byte length, then body */
  unsigned char head[4];
  if (full(fd, head, 4, 0)) return NULL;
  *len = (uint32_t)head[0] << 24 | head[1] << 16 | head[2] << 8 | head[3];
  unsigned char *body = malloc(*len);
  if (full(fd, body, *len, 0)) { free(body); return NULL; }
  return body;
}

static void put32(unsigned char *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }

static void *worker(void *arg) {
  result_t *res = arg;
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  strncpy(addr.sun_path, sock_path, sizeof addr.sun_path - 1);
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr)) { perror("connect"); exit(1); }
  unsigned char ask[5] = {0, 0, 0, 1, 11};  /* SSH2_AGENTC_REQUEST_IDENTITIES */
  uint32_t len;
  full(fd, ask, 5, 1);
  unsigned char *ids = message(fd, &len);
  if (!ids || ids[0] != 12) { fprintf(stderr, "no identities\n"); exit(1); }
  uint32_t blen = (uint32_t)ids[5] << 24 | ids[6] << 16 | ids[7] << 8 | ids[8];
  size_t plen = 1 + 4 + blen + 4 + 64 + 4;
  unsigned char *req = calloc(4 + plen, 1);
  put32(req, (uint32_t)plen);
  req[4] = 13;  /* SSH2_AGENTC_SIGN_REQUEST */
  put32(req + 5, blen);
  memcpy(req + 9, ids + 9, blen);
  put32(req + 9 + blen, 64);
  memset(req + 13 + blen, 'x', 64);
  put32(req + 13 + blen + 64, 0);
  double warm_end = now() + (seconds / 5 < 1 ? seconds / 5 : 1), end = warm_end + seconds;
  for (;;) {
    double t0 = now();
    if (t0 >= end) break;
    if (full(fd, req, 4 + plen, 1)) { res->errors++; break; }
    unsigned char *answer = message(fd, &len);
    double t1 = now();
    if (!answer || answer[0] != 14) res->errors++;
    free(answer);
    if (t0 >= warm_end) {
      if (res->n == res->cap) { res->cap = res->cap ? res->cap * 2 : 4096; res->lat = realloc(res->lat, res->cap * sizeof(double)); }
      res->lat[res->n++] = (t1 - t0) * 1e6;
    }
  }
  close(fd);
  return NULL;
}

static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

int main(int argc, char **argv) {
  if (argc != 4) { fprintf(stderr, "usage: agent_sign SOCKET CONNECTIONS SECONDS\n"); return 2; }
  sock_path = argv[1];
  int n = atoi(argv[2]);
  seconds = atof(argv[3]);
  pthread_t *threads = calloc(n, sizeof *threads);
  result_t *results = calloc(n, sizeof *results);
  for (int i = 0; i < n; i++) pthread_create(&threads[i], NULL, worker, &results[i]);
  size_t total = 0;
  int errors = 0;
  for (int i = 0; i < n; i++) { pthread_join(threads[i], NULL); total += results[i].n; errors += results[i].errors; }
  double *all = malloc((total ? total : 1) * sizeof(double));
  size_t k = 0;
  for (int i = 0; i < n; i++) { memcpy(all + k, results[i].lat, results[i].n * sizeof(double)); k += results[i].n; }
  qsort(all, total, sizeof(double), cmp);
  printf("{\"calls\": %zu, \"errors\": %d, \"p50_us\": %.1f, \"p99_us\": %.1f, \"rps\": %.1f}\n", total, errors,
         total ? all[total / 2] : 0.0, total ? all[(size_t)(total * 0.99)] : 0.0, total / seconds);
  return 0;
}

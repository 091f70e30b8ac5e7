/* Stand-in client: what tests/fakes/standin.py puts on PATH under a tool's name when a C compiler
 * is there (the bash client there is the fallback, with the same protocol and results).
 *
 * It costs a third of a bash start per call. A boot of vm/startup.sh makes some 30 calls, the
 * bootstrap about 80, so the suite makes thousands.
 *
 * The tool is the basename of /proc/self/exe: the kernel resolves the exec'd path
 * (proc(5), /proc/pid/exe: https://man7.org/linux/man-pages/man5/proc_pid_exe.5.html). Its
 * configuration is the file ".TOOL.standin" in the same directory: the server's port, then the
 * names of the environment variables to forward, one per line.
 *
 * What the script under test sees is what the bash client gives it: the call's stdout, stderr and
 * exit status; 1 when the server refuses the connection (bash exits 1 when `exec 3<>/dev/tcp/...`
 * fails, https://www.gnu.org/software/bash/manual/bash.html#Redirections and "Exit Status"), and
 * 125 when the reply is cut short (that client's `|| exit 125`).
 *
 * Request: the tool, each forwarded variable's value ("" when unset), argc, then each argument,
 * each field ending in NUL. Reply: "RC OUT_LEN ERR_LEN\n", then stdout's bytes, then stderr's.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { CONNECT_FAILED = 1, CUT_SHORT = 125 }; /* the bash client's exits: failed exec redirection, its `|| exit 125` */

static char out[1 << 16];
static size_t used;
static int sock = -1;
static const char *tool = "stand-in";

static void fail(int status, const char *what) {
    fprintf(stderr, "stand-in %s: %s: %s\n", tool, what, strerror(errno));
    exit(status);
}

static void write_all(int fd, const char *data, size_t len) {
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) fail(CUT_SHORT, "write");
        data += n;
        len -= (size_t)n;
    }
}

static void field(const char *text) {
    size_t len = strlen(text) + 1; /* with its NUL */
    if (used + len > sizeof out) {
        write_all(sock, out, used);
        used = 0;
    }
    if (len > sizeof out) {
        write_all(sock, text, len);
        return;
    }
    memcpy(out + used, text, len);
    used += len;
}

/* Copy exactly len bytes of the reply to fd; fewer means the server went away. */
static void relay(FILE *reply, long len, int fd) {
    char buf[1 << 16];
    while (len > 0) {
        size_t want = len < (long)sizeof buf ? (size_t)len : sizeof buf;
        size_t got = fread(buf, 1, want, reply);
        if (got == 0) {
            errno = EPIPE;
            fail(CUT_SHORT, "reply cut short");
        }
        write_all(fd, buf, got);
        len -= (long)got;
    }
}

int main(int argc, char **argv) {
    static char exe[4096], conf[4200], name[256];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) fail(CUT_SHORT, "readlink /proc/self/exe");
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    tool = slash + 1;
    *slash = '\0';
    snprintf(conf, sizeof conf, "%s/.%s.standin", exe, tool);
    FILE *config = fopen(conf, "r");
    int port;
    if (!config) fail(CUT_SHORT, conf);
    if (fscanf(config, "%d", &port) != 1) fail(CUT_SHORT, "no port in its .standin file");

    sock = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in server = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    server.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (sock < 0 || connect(sock, (struct sockaddr *)&server, sizeof server) < 0)
        fail(CONNECT_FAILED, "connect to 127.0.0.1");

    field(tool);
    while (fscanf(config, "%255s", name) == 1) {
        const char *value = getenv(name);
        field(value ? value : "");
    }
    char count[16];
    snprintf(count, sizeof count, "%d", argc - 1);
    field(count);
    for (int i = 1; i < argc; i++) field(argv[i]);
    write_all(sock, out, used);

    FILE *reply = fdopen(sock, "r");
    long rc, out_len, err_len;
    if (!reply || fscanf(reply, "%ld %ld %ld", &rc, &out_len, &err_len) != 3 || fgetc(reply) != '\n') {
        errno = EPIPE;
        fail(CUT_SHORT, "no reply");
    }
    relay(reply, out_len, STDOUT_FILENO);
    relay(reply, err_len, STDERR_FILENO);
    return (int)rc;
}

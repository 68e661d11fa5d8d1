/*
 * cachefs: a read-only mirror of a directory through libfuse's low-level API,
 * to measure what kernel features pyfuse3 3.5 does not expose would give
 * ArtifactFS (docs/performance.md). Not part of the product.
 *
 *   cachefs SOURCE MOUNTPOINT [cache-readdir] [no-open] [no-opendir]
 *
 * cache-readdir  opendir answers with FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE:
 *                the kernel keeps directory listings in its page cache.
 * no-open        open answers ENOSYS: the kernel stops sending OPEN and
 *                RELEASE (reads then arrive with fh 0).
 * no-opendir     the same for directories (the kernel then also caches
 *                listings, as if cache-readdir were set).
 *
 * Like the ArtifactFS daemon it always answers READDIRPLUS, gives entries
 * and attributes a 300 s timeout, keeps file pages (keep_cache) and runs one
 * request at a time. Build: gcc -O2 -Wall -o cachefs cachefs.c $(pkg-config --cflags --libs fuse3)
 */
#define FUSE_USE_VERSION 34
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const double TIMEOUT = 300.0;
static int cache_readdir, no_open, no_opendir;

struct node {
	ino_t ino;         /* the source file's inode: one node per source inode */
	int fd;            /* O_PATH descriptor of the source file */
	uint64_t lookups;  /* the kernel's references */
	struct node *next; /* hash chain */
};

#define BUCKETS 65536
static struct node *table[BUCKETS];
static struct node root;

static struct node *node_of(fuse_ino_t ino)
{
	return ino == FUSE_ROOT_ID ? &root : (struct node *)(uintptr_t)ino;
}

static fuse_ino_t id_of(struct node *node)
{
	return node == &root ? FUSE_ROOT_ID : (fuse_ino_t)(uintptr_t)node;
}

/* The node for NAME in PARENT, one more lookup taken; fills E. */
static int remember(struct node *parent, const char *name, struct fuse_entry_param *e)
{
	memset(e, 0, sizeof(*e));
	int fd = openat(parent->fd, name, O_PATH | O_NOFOLLOW);
	if (fd < 0)
		return errno;
	if (fstatat(fd, "", &e->attr, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0) {
		int error = errno;
		close(fd);
		return error;
	}
	struct node **slot = &table[e->attr.st_ino % BUCKETS];
	struct node *node = *slot;
	while (node && node->ino != e->attr.st_ino)
		node = node->next;
	if (node) {
		close(fd);
	} else {
		node = calloc(1, sizeof(*node));
		node->ino = e->attr.st_ino;
		node->fd = fd;
		node->next = *slot;
		*slot = node;
	}
	node->lookups++;
	e->ino = id_of(node);
	e->attr_timeout = TIMEOUT;
	e->entry_timeout = TIMEOUT;
	return 0;
}

static void forget_one(fuse_ino_t ino, uint64_t count)
{
	struct node *node = node_of(ino);
	if (node == &root)
		return;
	node->lookups -= count;
	if (node->lookups)
		return;
	struct node **slot = &table[node->ino % BUCKETS];
	while (*slot != node)
		slot = &(*slot)->next;
	*slot = node->next;
	close(node->fd);
	free(node);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO; /* READDIRPLUS every time, like pyfuse3 */
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	int error = remember(node_of(parent), name, &e);
	if (error == ENOENT) {
		e.ino = 0; /* a negative entry, kept as long */
		e.entry_timeout = TIMEOUT;
		fuse_reply_entry(req, &e);
	} else if (error) {
		fuse_reply_err(req, error);
	} else {
		fuse_reply_entry(req, &e);
	}
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t count)
{
	forget_one(ino, count);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		forget_one(forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	struct stat st;
	if (fstatat(node_of(ino)->fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_attr(req, &st, TIMEOUT);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	char target[4096];
	ssize_t length = readlinkat(node_of(ino)->fd, "", target, sizeof(target) - 1);
	if (length < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	target[length] = 0;
	fuse_reply_readlink(req, target);
}

/* A real descriptor for NODE (O_PATH descriptors cannot be read). */
static int reopen(struct node *node, int flags)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", node->fd);
	return open(path, flags);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (no_opendir) {
		fuse_reply_err(req, ENOSYS);
		return;
	}
	int fd = reopen(node_of(ino), O_RDONLY | O_DIRECTORY);
	DIR *dir = fd < 0 ? NULL : fdopendir(fd);
	if (!dir) {
		fuse_reply_err(req, errno);
		return;
	}
	fi->fh = (uint64_t)(uintptr_t)dir;
	fi->cache_readdir = cache_readdir;
	fi->keep_cache = cache_readdir;
	fuse_reply_open(req, fi);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
			   struct fuse_file_info *fi)
{
	struct node *parent = node_of(ino);
	DIR *dir = fi->fh ? (DIR *)(uintptr_t)fi->fh : NULL;
	int own = dir == NULL;
	if (own) {
		int fd = reopen(parent, O_RDONLY | O_DIRECTORY);
		dir = fd < 0 ? NULL : fdopendir(fd);
		if (!dir) {
			fuse_reply_err(req, errno);
			return;
		}
	}
	char *buffer = malloc(size);
	size_t used = 0;
	seekdir(dir, offset);
	for (;;) {
		long position = telldir(dir);
		errno = 0;
		struct dirent *entry = readdir(dir);
		if (!entry)
			break;
		if (!strcmp(entry->d_name, ".") || !strcmp(entry->d_name, ".."))
			continue;
		struct fuse_entry_param e;
		if (remember(parent, entry->d_name, &e))
			continue;
		size_t length = fuse_add_direntry_plus(req, buffer + used, size - used, entry->d_name, &e,
						       telldir(dir));
		if (length > size - used) {
			forget_one(e.ino, 1);
			seekdir(dir, position);
			break;
		}
		used += length;
	}
	fuse_reply_buf(req, buffer, used);
	free(buffer);
	if (own)
		closedir(dir);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	closedir((DIR *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (no_open) {
		fuse_reply_err(req, ENOSYS);
		return;
	}
	int fd = reopen(node_of(ino), O_RDONLY);
	if (fd < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	fi->fh = fd;
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, struct fuse_file_info *fi)
{
	int fd = fi->fh ? (int)fi->fh : reopen(node_of(ino), O_RDONLY);
	char *buffer = malloc(size);
	ssize_t length = pread(fd, buffer, size, offset);
	if (length < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_buf(req, buffer, length);
	free(buffer);
	if (!fi->fh)
		close(fd);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	close((int)fi->fh);
	fuse_reply_err(req, 0);
}

static const struct fuse_lowlevel_ops operations = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.readlink = op_readlink,
	.opendir = op_opendir,
	.readdirplus = op_readdirplus,
	.releasedir = op_releasedir,
	.open = op_open,
	.read = op_read,
	.release = op_release,
};

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s SOURCE MOUNTPOINT [cache-readdir] [no-open] [no-opendir]\n", argv[0]);
		return 2;
	}
	for (int i = 3; i < argc; i++) {
		cache_readdir |= !strcmp(argv[i], "cache-readdir");
		no_open |= !strcmp(argv[i], "no-open");
		no_opendir |= !strcmp(argv[i], "no-opendir");
	}
	root.fd = open(argv[1], O_PATH | O_DIRECTORY);
	if (root.fd < 0) {
		perror(argv[1]);
		return 1;
	}
	char *fuse_argv[] = {argv[0], "-o", "fsname=cachefs,default_permissions", NULL};
	struct fuse_args args = FUSE_ARGS_INIT(3, fuse_argv);
	struct fuse_session *session = fuse_session_new(&args, &operations, sizeof(operations), NULL);
	if (!session || fuse_session_mount(session, argv[2]) != 0)
		return 1;
	fuse_daemonize(0);
	int result = fuse_session_loop(session);
	fuse_session_unmount(session);
	fuse_session_destroy(session);
	return result ? 1 : 0;
}

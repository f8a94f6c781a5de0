package provision

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Image size limits. Sizes must be whole 4 KiB blocks: images use 4 KiB
// filesystem blocks and swap pages.
const (
	ImageBlockSize   = 4096
	MinRootImageSize = 16 << 20 // mke2fs -t ext4 needs room for its journal
	MinSwapImageSize = 1 << 20
)

// toolPackage says which Debian package provides each external program.
var toolPackage = map[string]string{
	"mke2fs":    "e2fsprogs",
	"resize2fs": "e2fsprogs",
	"e2fsck":    "e2fsprogs",
	"dumpe2fs":  "e2fsprogs",
	"debugfs":   "e2fsprogs",
	"mkswap":    "util-linux",
}

// toolDirs are searched after $PATH: an ordinary user's PATH on Debian
// lacks the sbin directories where these tools live.
var toolDirs = []string{"/usr/sbin", "/sbin"}

// FindTool returns the path of an external program that images need
// (mke2fs, resize2fs, e2fsck, dumpe2fs, debugfs, mkswap), looking in $PATH
// and then /usr/sbin and /sbin. The error names the Debian package to
// install.
func FindTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range toolDirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	pkg := toolPackage[name]
	if pkg == "" {
		return "", fmt.Errorf("%w: %s is not installed", ErrMissingTool, name)
	}
	return "", fmt.Errorf("%w: %s is not installed; install it with: apt-get install %s", ErrMissingTool, name, pkg)
}

// runTool runs an external program and returns its standard output. On
// failure the error carries the program's own messages.
func runTool(ctx context.Context, name string, args ...string) ([]byte, error) {
	path, err := FindTool(name)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if ctx.Err() != nil {
		return stdout.Bytes(), fmt.Errorf("%s interrupted: %w", name, ctx.Err())
	}
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		if len(msg) > 2000 {
			msg = "..." + msg[len(msg)-2000:]
		}
		return stdout.Bytes(), &ToolError{Tool: name, Args: args, Err: err, Output: msg}
	}
	return stdout.Bytes(), nil
}

// ToolError is an external program that failed.
type ToolError struct {
	Tool   string
	Args   []string
	Err    error  // usually *exec.ExitError
	Output string // what the program said
}

func (e *ToolError) Error() string {
	s := fmt.Sprintf("%s %s: %v", e.Tool, strings.Join(e.Args, " "), e.Err)
	if e.Output != "" {
		s += ": " + e.Output
	}
	return s
}

func (e *ToolError) Unwrap() error { return e.Err }

// ExitCode returns the program's exit status, or -1.
func (e *ToolError) ExitCode() int {
	var ee *exec.ExitError
	if errors.As(e.Err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// progress writes numbered step lines: "what (i/n): step".
type progress struct {
	w    io.Writer
	what string
	i, n int
}

func newProgress(w io.Writer, n int, format string, args ...any) *progress {
	if w == nil {
		w = io.Discard
	}
	return &progress{w: w, n: n, what: fmt.Sprintf(format, args...)}
}

func (p *progress) step(format string, args ...any) {
	p.i++
	fmt.Fprintf(p.w, "%s (%d/%d): %s\n", p.what, p.i, p.n, fmt.Sprintf(format, args...))
}

// InitLayout creates the images directory tree of the how-to: DIR/boot,
// DIR/configs and DIR/nodeN for each node. Existing directories are kept.
func InitLayout(dir string, nodes []Node) error {
	if dir == "" {
		return fmt.Errorf("%w: empty images directory", ErrInvalid)
	}
	for _, n := range nodes {
		if err := n.Validate(); err != nil {
			return err
		}
	}
	dirs := []string{filepath.Join(dir, "boot"), filepath.Join(dir, "configs")}
	for _, n := range nodes {
		dirs = append(dirs, NodeDir(dir, n))
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("creating images layout: %w", err)
		}
	}
	return nil
}

func checkImageSize(what string, size, min int64) error {
	if size%ImageBlockSize != 0 {
		return fmt.Errorf("%w: %s size %d bytes is not a whole number of 4 KiB blocks (e.g. %s)", ErrInvalid, what, size, FormatSize((size/ImageBlockSize+1)*ImageBlockSize))
	}
	if size < min {
		return fmt.Errorf("%w: %s size %s: the minimum is %s", ErrTooSmall, what, FormatSize(size), FormatSize(min))
	}
	return nil
}

// checkTarget refuses to create path if it exists (unless force) or is in
// use, and checks that its directory exists.
func checkTarget(path string, force bool) error {
	if st, err := os.Stat(filepath.Dir(path)); err != nil || !st.IsDir() {
		return fmt.Errorf("%w: directory %s does not exist (create the layout first: ssi images init)", ErrInvalid, filepath.Dir(path))
	}
	st, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case !force:
		return fmt.Errorf("%w: %s (use force to replace it)", ErrExists, path)
	case !st.Mode().IsRegular():
		return fmt.Errorf("%w: %s exists and is not a regular file; not replacing it", ErrInvalid, path)
	}
	return checkNotInUse(path)
}

// checkNotInUse refuses images attached to a loop device, which is how
// image files get mounted on the host.
func checkNotInUse(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(b)) == abs {
			dev := filepath.Base(filepath.Dir(filepath.Dir(f)))
			return fmt.Errorf("%w: %s is attached to /dev/%s (unmount it and run losetup -d /dev/%s first)", ErrInUse, path, dev, dev)
		}
	}
	return nil
}

// newSparseTemp creates an empty sparse file of size bytes next to path.
func newSparseTemp(path string, size int64) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("creating %s: %w", path, err)
	}
	tmp := f.Name()
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("creating %s: %w", path, err)
	}
	return tmp, nil
}

// commitTemp moves a finished temporary file to path. Without force it
// never replaces an existing file, even one that appeared meanwhile.
func commitTemp(tmp, path string, force bool) error {
	if force {
		if err := os.Rename(tmp, path); err != nil {
			return fmt.Errorf("installing %s: %w", path, err)
		}
		return nil
	}
	err := os.Link(tmp, path)
	switch {
	case err == nil:
		os.Remove(tmp)
		return nil
	case errors.Is(err, fs.ErrExist):
		return fmt.Errorf("%w: %s (use force to replace it)", ErrExists, path)
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.ENOTSUP), errors.Is(err, syscall.EMLINK), errors.Is(err, syscall.EXDEV):
		// No hard links on this filesystem: check, then rename.
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%w: %s (use force to replace it)", ErrExists, path)
		}
		if err := os.Rename(tmp, path); err != nil {
			return fmt.Errorf("installing %s: %w", path, err)
		}
		return nil
	default:
		return fmt.Errorf("installing %s: %w", path, err)
	}
}

// estimateContent returns an estimate of the space the files under dir
// take in an ext4 filesystem with 4 KiB blocks, and how many files there are.
func estimateContent(dir string) (bytes int64, files int64, err error) {
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		files++
		bytes += ImageBlockSize // directory, symlink, device: at least a block or an inode's worth
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			bytes += (info.Size() + ImageBlockSize - 1) / ImageBlockSize * ImageBlockSize
		}
		return nil
	})
	return bytes, files, err
}

// MinRootImageSizeFor returns the smallest root image ssi will create for
// the files under fromDir: MinRootImageSize plus the files' size and a
// tenth more for filesystem metadata, rounded up to a MiB. It is an
// estimate; mke2fs has the final word.
func MinRootImageSizeFor(fromDir string) (int64, error) {
	if fromDir == "" {
		return MinRootImageSize, nil
	}
	content, _, err := estimateContent(fromDir)
	if err != nil {
		return 0, fmt.Errorf("measuring %s: %w", fromDir, err)
	}
	min := MinRootImageSize + content + content/10
	const mib = 1 << 20
	return (min + mib - 1) / mib * mib, nil
}

// CreateRootImage creates an ext4 root filesystem image of sizeBytes at
// path, filled with a copy of the directory tree fromDir (empty if
// fromDir is ""), with mke2fs -t ext4 -d on a sparse file: no loop
// mounts, no root privileges needed. The filesystem is labelled
// RootLabel. An existing file is replaced only if force is set (and never
// while attached to a loop device). The image is built under a temporary
// name in the same directory and renamed into place, so path is either
// the finished image or untouched. Progress lines go to progress (nil for
// none).
func CreateRootImage(ctx context.Context, path string, sizeBytes int64, fromDir string, force bool, progress io.Writer) error {
	p := newProgress(progress, 4, "creating root image %s", path)
	if err := checkImageSize("root image", sizeBytes, MinRootImageSize); err != nil {
		return err
	}
	if fromDir != "" {
		st, err := os.Stat(fromDir)
		if err != nil {
			return fmt.Errorf("%w: root image contents: %w", ErrInvalid, err)
		}
		if !st.IsDir() {
			return fmt.Errorf("%w: root image contents %s is not a directory", ErrInvalid, fromDir)
		}
	}
	if err := checkTarget(path, force); err != nil {
		return err
	}
	if _, err := FindTool("mke2fs"); err != nil {
		return err
	}
	p.step("measuring %s", orNone(fromDir))
	min, err := MinRootImageSizeFor(fromDir)
	if err != nil {
		return err
	}
	if sizeBytes < min {
		return fmt.Errorf("%w: root image size %s is too small for the files in %s: make it at least %s", ErrTooSmall, FormatSize(sizeBytes), fromDir, FormatSize(min))
	}
	p.step("allocating a sparse file of %s", FormatSize(sizeBytes))
	tmp, err := newSparseTemp(path, sizeBytes)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	args := []string{"-q", "-F", "-t", "ext4", "-b", strconv.Itoa(ImageBlockSize), "-L", RootLabel}
	if fromDir != "" {
		args = append(args, "-d", fromDir)
	}
	args = append(args, tmp)
	if fromDir != "" {
		p.step("making an ext4 filesystem with mke2fs and copying %s into it", fromDir)
	} else {
		p.step("making an empty ext4 filesystem with mke2fs")
	}
	if _, err := runTool(ctx, "mke2fs", args...); err != nil {
		return fmt.Errorf("creating root image %s: %w", path, err)
	}
	p.step("installing as %s", path)
	if err := commitTemp(tmp, path, force); err != nil {
		return err
	}
	ok = true
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "(empty filesystem)"
	}
	return s
}

// ImageInfo describes an ext2/3/4 image.
type ImageInfo struct {
	FileSize   int64 // bytes in the file (its apparent size)
	BlockCount int64 // filesystem blocks
	BlockSize  int64 // bytes per block
	Label      string
}

// FSSize is the filesystem's size in bytes.
func (i ImageInfo) FSSize() int64 { return i.BlockCount * i.BlockSize }

// InspectImage reads an ext2/3/4 image's superblock with dumpe2fs -h.
func InspectImage(ctx context.Context, path string) (ImageInfo, error) {
	st, err := os.Stat(path)
	if err != nil {
		return ImageInfo{}, fmt.Errorf("image: %w", err)
	}
	out, err := runTool(ctx, "dumpe2fs", "-h", path)
	if err != nil {
		if errors.Is(err, ErrMissingTool) {
			return ImageInfo{}, err
		}
		return ImageInfo{}, fmt.Errorf("%w: %s is not an ext2/3/4 filesystem image: %w", ErrInvalid, path, err)
	}
	info := ImageInfo{FileSize: st.Size()}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Block count":
			info.BlockCount, _ = strconv.ParseInt(v, 10, 64)
		case "Block size":
			info.BlockSize, _ = strconv.ParseInt(v, 10, 64)
		case "Filesystem volume name":
			if v != "<none>" {
				info.Label = v
			}
		}
	}
	if info.BlockCount <= 0 || info.BlockSize <= 0 {
		return ImageInfo{}, fmt.Errorf("%w: dumpe2fs -h %s printed no block count or size", ErrInvalid, path)
	}
	return info, nil
}

// GrowImage enlarges the ext2/3/4 image at path to newSize bytes: it
// checks the filesystem with e2fsck -f -y, extends the file (sparsely)
// and runs resize2fs. It refuses to shrink, and refuses images attached
// to a loop device. If resize2fs fails, the file is cut back to its old
// size, which leaves the old filesystem as it was. Growing to the current
// size does nothing (or finishes an earlier, interrupted grow).
func GrowImage(ctx context.Context, path string, newSize int64, progress io.Writer) error {
	p := newProgress(progress, 3, "growing %s to %s", path, FormatSize(newSize))
	if err := checkImageSize("image", newSize, 0); err != nil {
		return err
	}
	info, err := InspectImage(ctx, path)
	if err != nil {
		return err
	}
	if newSize < info.FileSize || newSize < info.FSSize() {
		cur := max(info.FileSize, info.FSSize())
		return fmt.Errorf("%w: %s is %s and would shrink to %s; ssi only grows images (shrinking can lose data)", ErrShrink, path, FormatSize(cur), FormatSize(newSize))
	}
	if newSize == info.FSSize() && newSize == info.FileSize {
		fmt.Fprintf(orDiscard(progress), "%s is already %s\n", path, FormatSize(newSize))
		return nil
	}
	if err := checkNotInUse(path); err != nil {
		return err
	}
	for _, t := range []string{"e2fsck", "resize2fs"} {
		if _, err := FindTool(t); err != nil {
			return err
		}
	}
	p.step("checking the filesystem with e2fsck -f -y")
	if _, err := runTool(ctx, "e2fsck", "-f", "-y", path); err != nil {
		var te *ToolError
		// 1: errors corrected; 2: corrected, reboot advised (not for an image).
		if !errors.As(err, &te) || te.ExitCode() < 0 || te.ExitCode() > 2 {
			return fmt.Errorf("growing %s: the filesystem has errors e2fsck could not fix; repair it with e2fsck -f %s: %w", path, path, err)
		}
	}
	oldSize := info.FileSize
	if newSize > oldSize {
		p.step("extending the file from %s to %s", FormatSize(oldSize), FormatSize(newSize))
		if err := os.Truncate(path, newSize); err != nil {
			return fmt.Errorf("growing %s: %w", path, err)
		}
	} else {
		p.step("file is already %s", FormatSize(newSize))
	}
	p.step("growing the filesystem with resize2fs")
	if _, err := runTool(ctx, "resize2fs", path); err != nil {
		if newSize > oldSize {
			if terr := os.Truncate(path, oldSize); terr != nil {
				err = errors.Join(err, fmt.Errorf("restoring the old size: %w", terr))
			}
		}
		return fmt.Errorf("growing %s: %w", path, err)
	}
	return nil
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

// CreateSwapImage creates a swap image of size bytes at path: a sparse
// file prepared with mkswap and labelled SwapLabel. Like CreateRootImage it
// replaces an existing file only with force, and the file appears whole or
// not at all.
func CreateSwapImage(ctx context.Context, path string, size int64, force bool, progress io.Writer) error {
	p := newProgress(progress, 2, "creating swap image %s", path)
	if err := checkImageSize("swap image", size, MinSwapImageSize); err != nil {
		return err
	}
	if err := checkTarget(path, force); err != nil {
		return err
	}
	p.step("mkswap on a sparse file of %s", FormatSize(size))
	tmp, err := buildSwapTemp(ctx, path, size)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	p.step("installing as %s", path)
	if err := commitTemp(tmp, path, force); err != nil {
		return err
	}
	ok = true
	return nil
}

// buildSwapTemp makes a swap image under a temporary name next to path
// and returns that name; the caller renames or removes it.
func buildSwapTemp(ctx context.Context, path string, size int64) (string, error) {
	if _, err := FindTool("mkswap"); err != nil {
		return "", err
	}
	tmp, err := newSparseTemp(path, size)
	if err != nil {
		return "", err
	}
	if _, err := runTool(ctx, "mkswap", "-L", SwapLabel, tmp); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("creating swap image %s: %w", path, err)
	}
	return tmp, nil
}

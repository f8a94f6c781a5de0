package provision

import (
	"fmt"
	"strings"
)

// A small parser of the xl configuration syntax as libxlutil's lexer and
// grammar define it (libxlu_cfg_l.l, libxlu_cfg_y.y), for the tests: it
// lets them read back what the encoder wrote. Real xl is checked too, in
// xlcheck_test.go, where libxlutil is installed.

type xlValue struct {
	kind  byte // 's' string, 'n' number, 'l' list
	str   string
	items []xlValue
}

type xlSetting struct {
	key   string
	value xlValue
}

type xlParser struct {
	src  string
	pos  int
	line int
}

func (p *xlParser) errorf(format string, args ...any) error {
	return fmt.Errorf("line %d: %s", p.line+1, fmt.Sprintf(format, args...))
}

func (p *xlParser) peek() (byte, bool) {
	if p.pos >= len(p.src) {
		return 0, false
	}
	return p.src[p.pos], true
}

// skip skips blanks and comments, and newlines if nl.
func (p *xlParser) skip(nl bool) {
	for p.pos < len(p.src) {
		switch c := p.src[p.pos]; {
		case c == ' ' || c == '\t':
			p.pos++
		case c == '#':
			for p.pos < len(p.src) && p.src[p.pos] != '\n' {
				p.pos++
			}
		case c == '\n' && nl:
			p.pos++
			p.line++
		default:
			return
		}
	}
}

func parseXL(src string) ([]xlSetting, error) {
	if strings.IndexByte(src, 0) >= 0 {
		return nil, fmt.Errorf("NUL byte in configuration")
	}
	p := &xlParser{src: src}
	var out []xlSetting
	for {
		p.skip(true)
		if p.pos >= len(p.src) {
			return out, nil
		}
		if c := p.src[p.pos]; c == ';' {
			p.pos++
			continue
		}
		key := p.ident()
		if key == "" {
			return nil, p.errorf("expected a key at %q", p.rest())
		}
		p.skip(false)
		if c, _ := p.peek(); c == '+' && strings.HasPrefix(p.src[p.pos:], "+=") {
			return nil, p.errorf("+= not expected from ssi")
		}
		if c, ok := p.peek(); !ok || c != '=' {
			return nil, p.errorf("expected '=' after %s", key)
		}
		p.pos++
		p.skip(false)
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		out = append(out, xlSetting{key, v})
		p.skip(false)
		if c, ok := p.peek(); ok {
			switch c {
			case '\n':
				p.pos++
				p.line++
			case ';':
				p.pos++
			default:
				return nil, p.errorf("junk after value of %s: %q", key, p.rest())
			}
		}
	}
}

func (p *xlParser) rest() string {
	r := p.src[p.pos:]
	if len(r) > 20 {
		r = r[:20]
	}
	return r
}

func (p *xlParser) ident() string {
	start := p.pos
	if c, ok := p.peek(); !ok || c < 'a' || c > 'z' {
		return ""
	}
	p.pos++
	for p.pos < len(p.src) {
		c := p.src[p.pos]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			break
		}
		p.pos++
	}
	return p.src[start:p.pos]
}

func (p *xlParser) value() (xlValue, error) {
	c, ok := p.peek()
	if !ok {
		return xlValue{}, p.errorf("missing value")
	}
	switch {
	case c == '"' || c == '\'':
		s, err := p.quoted()
		return xlValue{kind: 's', str: s}, err
	case c >= '0' && c <= '9':
		start := p.pos
		for p.pos < len(p.src) {
			c := p.src[p.pos]
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c == 'x') {
				break
			}
			p.pos++
		}
		return xlValue{kind: 'n', str: p.src[start:p.pos]}, nil
	case c == '[':
		p.pos++
		v := xlValue{kind: 'l'}
		for {
			p.skip(true)
			c, ok := p.peek()
			if !ok {
				return v, p.errorf("unterminated list")
			}
			if c == ']' {
				p.pos++
				return v, nil
			}
			it, err := p.value()
			if err != nil {
				return v, err
			}
			v.items = append(v.items, it)
			p.skip(true)
			c, ok = p.peek()
			switch {
			case ok && c == ',':
				p.pos++
			case ok && c == ']':
			default:
				return v, p.errorf("expected ',' or ']' in list")
			}
		}
	}
	return xlValue{}, p.errorf("unexpected %q", c)
}

func (p *xlParser) quoted() (string, error) {
	q := p.src[p.pos]
	p.pos++
	var b strings.Builder
	for {
		if p.pos >= len(p.src) {
			return "", p.errorf("unterminated string")
		}
		c := p.src[p.pos]
		p.pos++
		switch c {
		case q:
			return b.String(), nil
		case '\n':
			return "", p.errorf("newline in string")
		case '\\':
			if p.pos >= len(p.src) || p.src[p.pos] == '\n' {
				return "", p.errorf("backslash at end of line")
			}
			e := p.src[p.pos]
			p.pos++
			switch e {
			case '"', '\'', '\\':
				b.WriteByte(e)
			case 'a':
				b.WriteByte('\a')
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			case 'v':
				b.WriteByte('\v')
			default: // includes the numeric escapes libxlutil fails on
				return "", p.errorf("escape \\%c not accepted by libxlutil", e)
			}
		default:
			b.WriteByte(c)
		}
	}
}

// xlGet returns the value of key, failing the lookup if it is set twice.
func xlGet(settings []xlSetting, key string) (xlValue, bool) {
	var v xlValue
	n := 0
	for _, s := range settings {
		if s.key == key {
			v = s.value
			n++
		}
	}
	return v, n == 1
}

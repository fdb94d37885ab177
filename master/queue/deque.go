package queue

// deque is a ring buffer of Tasks with O(1) amortized push at both ends and
// pop at the front. Its capacity is 0 or a power of two.
type deque struct {
	buf  []Task
	head int
	n    int
}

const (
	dequeMinCap    = 16
	dequeShrinkCap = 1024 // never shrink below this
)

func (d *deque) len() int { return d.n }

// at returns the i-th task from the front; 0 <= i < d.n.
func (d *deque) at(i int) *Task { return &d.buf[(d.head+i)&(len(d.buf)-1)] }

func (d *deque) pushBack(t Task) {
	if d.n == len(d.buf) {
		d.resize(max(dequeMinCap, 2*len(d.buf)))
	}
	d.buf[(d.head+d.n)&(len(d.buf)-1)] = t
	d.n++
}

func (d *deque) pushFront(t Task) {
	if d.n == len(d.buf) {
		d.resize(max(dequeMinCap, 2*len(d.buf)))
	}
	d.head = (d.head - 1) & (len(d.buf) - 1)
	d.buf[d.head] = t
	d.n++
}

// popFront moves the front task into *dst; d.n must be > 0.
func (d *deque) popFront(dst *Task) {
	p := &d.buf[d.head]
	*dst = *p
	*p = Task{} // drop the payload reference
	d.head = (d.head + 1) & (len(d.buf) - 1)
	d.n--
	if c := len(d.buf); c > dequeShrinkCap && d.n <= c/4 {
		d.resize(c / 2)
	}
}

// reserve makes room for k more tasks without further growth.
func (d *deque) reserve(k int) {
	need := d.n + k
	if need <= len(d.buf) {
		return
	}
	c := max(dequeMinCap, len(d.buf))
	for c < need {
		c *= 2
	}
	d.resize(c)
}

func (d *deque) resize(c int) {
	nb := make([]Task, c)
	if d.n > 0 {
		end := d.head + d.n
		if end <= len(d.buf) {
			copy(nb, d.buf[d.head:end])
		} else {
			k := copy(nb, d.buf[d.head:])
			copy(nb[k:], d.buf[:end-len(d.buf)])
		}
	}
	d.buf = nb
	d.head = 0
}

// clear drops every task and releases the buffer.
func (d *deque) clear() { *d = deque{} }

package jsqueue

import "testing"

// A pull tells its consumer's messages by their ack subject, in both
// layouts JetStream uses, and no other consumer's.
func TestIsAckOf(t *testing.T) {
	next := pullPrefix + "QM_a_1.qm"
	for reply, want := range map[string]bool{
		"$JS.ACK.QM_a_1.qm.1.2.3.4.0":            true,
		"$JS.ACK.dom.hash.QM_a_1.qm.1.2.3.4.0.x": true,
		"$JS.ACK.QM_a_1.qm-p5.1.2.3.4.0":         false,
		"$JS.ACK.QM_b_1.qm.1.2.3.4.0":            false,
		"$JS.ACK.XQM_a_1.qm.1.2.3.4.0":           false,
		"_INBOX.x":                               false,
		"":                                       false,
	} {
		if got := isAckOf(reply, next); got != want {
			t.Errorf("%s: %v", reply, got)
		}
	}
}

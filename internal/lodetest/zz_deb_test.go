package lodetest_test
import ("testing";"github.com/lode-dev/lode/internal/lodetest")
func TestDebianTmp(t *testing.T){ t.Log(lodetest.DebianRootfs(t)) }

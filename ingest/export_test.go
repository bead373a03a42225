package ingest

// HeldUsed returns the bytes counted in the MaxHeld budget.
func (in *Ingester) HeldUsed() int64 {
	in.held.mu.Lock()
	defer in.held.mu.Unlock()
	return in.held.used
}

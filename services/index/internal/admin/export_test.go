package admin

// SetBackupChunk sets how many bytes a BackupResponse carries until the
// test ends (restore).
func SetBackupChunk(n int) (restore func()) {
	old := backupChunk
	backupChunk = n
	return func() { backupChunk = old }
}

/*
 * bcryptprimitives.dll for Wine 8.0 (Debian 12), which lacks it: the Go
 * runtime (1.22 and later) calls ProcessPrng at start for its random
 * numbers, and a Windows binary dies at once without it. This stub fills
 * the buffer from RtlGenRandom (advapi32's SystemFunction036), which
 * Wine has. Only for running the Windows test binaries under Wine
 * (scripts/wine.sh); never shipped.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T size)
{
	while (size > 0) {
		ULONG n = size > 0x40000000 ? 0x40000000 : (ULONG)size;
		if (!SystemFunction036(data, n))
			return FALSE;
		data += n;
		size -= n;
	}
	return TRUE;
}

package senml

// unitList is the SenML units registry that Decode accepts: RFC 8428
// §12.1 in table order, then the primary units registered by RFC 8798 §2.
// Units that RFC 8428 marks as "SHOULD NOT be produced" (g, l, l/s, Bspl,
// %, 1/min, beat/min, beats) are still accepted, as receivers must.
var unitList = [...]string{
	// RFC 8428 §12.1.
	"m",        // meter
	"kg",       // kilogram
	"g",        // gram
	"s",        // second
	"A",        // ampere
	"K",        // kelvin
	"cd",       // candela
	"mol",      // mole
	"Hz",       // hertz
	"rad",      // radian
	"sr",       // steradian
	"N",        // newton
	"Pa",       // pascal
	"J",        // joule
	"W",        // watt
	"C",        // coulomb
	"V",        // volt
	"F",        // farad
	"Ohm",      // ohm
	"S",        // siemens
	"Wb",       // weber
	"T",        // tesla
	"H",        // henry
	"Cel",      // degrees Celsius
	"lm",       // lumen
	"lx",       // lux
	"Bq",       // becquerel
	"Gy",       // gray
	"Sv",       // sievert
	"kat",      // katal
	"m2",       // square meter (area)
	"m3",       // cubic meter (volume)
	"l",        // liter (volume)
	"m/s",      // meter per second (velocity)
	"m/s2",     // meter per square second (acceleration)
	"m3/s",     // cubic meter per second (flow rate)
	"l/s",      // liter per second (flow rate)
	"W/m2",     // watt per square meter (irradiance)
	"cd/m2",    // candela per square meter (luminance)
	"bit",      // bit (information content)
	"bit/s",    // bit per second (data rate)
	"lat",      // degrees latitude
	"lon",      // degrees longitude
	"pH",       // pH value (acidity; logarithmic quantity)
	"dB",       // decibel (logarithmic quantity)
	"dBW",      // decibel relative to 1 W (power level)
	"Bspl",     // bel (sound pressure level; logarithmic quantity)
	"count",    // 1 (counter value)
	"/",        // 1 (ratio, e.g., value of a switch)
	"%",        // 1 (ratio, e.g., value of a switch)
	"%RH",      // percentage (relative humidity)
	"%EL",      // percentage (remaining battery energy level)
	"EL",       // seconds (remaining battery energy level)
	"1/s",      // 1 per second (event rate)
	"1/min",    // 1 per minute (event rate, "rpm")
	"beat/min", // 1 per minute (heart rate in beats per minute)
	"beats",    // 1 (cumulative number of heart beats)
	"S/m",      // siemens per meter (conductivity)

	// RFC 8798 §2, new primary units.
	"B",     // byte (information content)
	"VA",    // volt-ampere (apparent power)
	"VAs",   // volt-ampere second (apparent energy)
	"var",   // volt-ampere reactive (reactive power)
	"vars",  // volt-ampere-reactive second (reactive energy)
	"J/m",   // joule per meter (energy per distance)
	"kg/m3", // kilogram per cubic meter (mass density)
	"deg",   // degree (angle)
	"NTU",   // nephelometric turbidity unit
}

// units maps each registered unit to itself, so that a lookup with a byte
// slice key (which does not allocate) yields a shared string.
var units = func() map[string]string {
	m := make(map[string]string, len(unitList))
	for _, u := range unitList {
		m[u] = u
	}
	return m
}()

// maxUnitLen bounds the unit strings Decode reads; no registered unit is
// longer.
const maxUnitLen = 16

// KnownUnit reports whether u is in the SenML units registry that Decode
// accepts.
func KnownUnit(u string) bool {
	_, ok := units[u]
	return ok
}
